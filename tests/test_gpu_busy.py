"""The benchmark's GPU-busy sampler, driven by a stand-in ``nvidia-smi`` (no GPU needed)."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gpu_busy import GpuBusy  # noqa: E402


def _fake_smi(folder: Path, body: str) -> Path:
    exe = folder / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


@pytest.mark.skipif(os.name != "posix", reason="the stand-in nvidia-smi is a shell script")
def test_mean_of_the_samples_printed_while_entered(tmp_path: Path) -> None:
    args = tmp_path / "args.txt"
    _fake_smi(tmp_path, f'echo "$@" > {args}\nprintf "80\\n100 %%\\nN/A\\n90\\n"\nexec sleep 30\n')
    with GpuBusy(index=1, period_ms=50, command=str(tmp_path / "nvidia-smi")) as busy:
        deadline = time.monotonic() + 10
        while len(busy.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert busy.samples == [80.0, 100.0, 90.0]  # "N/A" skipped, "%" stripped
    assert busy.mean == pytest.approx(90.0)
    assert busy.describe() == "GPU busy 90.0 % (mean of 3 samples every 50 ms)"
    assert args.read_text().split() == ["--query-gpu=utilization.gpu",
                                        "--format=csv,noheader,nounits", "--loop-ms=50", "--id=1"]


def test_without_nvidia_smi_nothing_is_measured(tmp_path: Path) -> None:
    with GpuBusy(command=str(tmp_path / "missing-smi")) as busy:
        pass
    assert busy.mean is None
    assert busy.describe() == f"GPU busy: not measured ({tmp_path / 'missing-smi'} not found)"


@pytest.mark.skipif(os.name != "posix", reason="the stand-in nvidia-smi is a shell script")
def test_a_silent_nvidia_smi_is_reported(tmp_path: Path) -> None:
    _fake_smi(tmp_path, "exit 9\n")
    with GpuBusy(command=str(tmp_path / "nvidia-smi")) as busy:
        time.sleep(0.1)
    assert busy.describe() == f"GPU busy: not measured ({tmp_path / 'nvidia-smi'} printed no samples)"
