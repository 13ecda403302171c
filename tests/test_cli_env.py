"""Environment and logging set by the command line, never by importing the package."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from wsi_saliency.cli._logging import setup_logging

_PROBE = """
import os, sys
os.environ.pop("OMP_WAIT_POLICY", None)
import wsi_saliency, wsi_saliency.cli, wsi_saliency.batch, wsi_saliency.worker
print("after import:", os.environ.get("OMP_WAIT_POLICY"))
sys.argv = ["wsi-saliency", "--version"]
try:
    wsi_saliency.cli.main()
except SystemExit:
    pass
print("after main:", os.environ.get("OMP_WAIT_POLICY"))
"""


def test_omp_wait_policy_is_set_by_main_not_by_import() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "after import: None" in out
    assert "after main: PASSIVE" in out


@pytest.fixture
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.delenv("DASK_LOGGING__DISTRIBUTED", raising=False)
    root, dist = logging.getLogger(), logging.getLogger("distributed")
    saved = (list(root.handlers), root.level, dist.level)
    yield None
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    dist.setLevel(saved[2])


@pytest.mark.usefixtures("restore_logging")
def test_quiet_silences_dask_info_logs_here_and_in_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dist = logging.getLogger("distributed")
    dist.setLevel(logging.INFO)
    setup_logging(None, "text", quiet=False)
    assert dist.level == logging.INFO and "DASK_LOGGING__DISTRIBUTED" not in os.environ
    setup_logging(None, "text", quiet=True)
    assert not dist.isEnabledFor(logging.INFO)
    # worker processes of a local cluster read Dask's configuration from the environment
    assert os.environ["DASK_LOGGING__DISTRIBUTED"] == "warning"
    import dask

    dask.config.refresh()
    try:
        assert dask.config.get("logging.distributed") == "warning"
    finally:
        monkeypatch.delenv("DASK_LOGGING__DISTRIBUTED")
        dask.config.refresh()


def test_the_command_line_starts_without_the_heavy_libraries() -> None:
    """``wsi-saliency --help`` imports neither torch nor the output stack (zarr, dask,
    matplotlib, distributed): the configuration takes its choices from light modules."""
    probe = (
        "import sys, wsi_saliency.cli; "
        "print(sorted(m for m in ('torch', 'zarr', 'dask', 'matplotlib', 'distributed') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
