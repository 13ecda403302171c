"""How busy a GPU was while a piece of work ran: ``nvidia-smi`` sampled in the background.

``utilization.gpu`` is NVML's "percent of time over the past sample period during which one
or more kernels was executing on the GPU": the GPU busy fraction of issue 12's goal
(>= 90 %). Usage::

    with GpuBusy(index=0) as busy:
        run_the_job()
    print(busy.describe())  # "GPU busy 93.4 % (mean of 52 samples every 100 ms)"

Without ``nvidia-smi`` on ``PATH`` nothing is sampled and :meth:`GpuBusy.describe` says so.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from types import TracebackType

__all__ = ["GpuBusy"]


class GpuBusy:
    """Samples ``nvidia-smi --query-gpu=utilization.gpu`` every ``period_ms`` while entered.

    Parameters
    ----------
    index
        GPU index (``nvidia-smi -i``).
    period_ms
        Sampling period in milliseconds (``nvidia-smi -lms``).
    command
        The ``nvidia-smi`` executable.
    """

    def __init__(self, index: int = 0, period_ms: int = 100, command: str = "nvidia-smi") -> None:
        self.index = index
        self.period_ms = period_ms
        self.command = command
        self.samples: list[float] = []
        self.reason = ""
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> GpuBusy:
        exe = shutil.which(self.command)
        if exe is None:
            self.reason = f"not measured ({self.command} not found)"
            return self
        self._proc = subprocess.Popen(
            [exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
             f"--loop-ms={self.period_ms}", f"--id={self.index}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.strip().rstrip("%").strip()))
            except ValueError:
                continue

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._proc is not None and not self.samples:
            self.reason = f"not measured ({self.command} printed no samples)"

    @property
    def mean(self) -> float | None:
        """Mean busy percentage over the samples, or ``None`` without samples."""
        return sum(self.samples) / len(self.samples) if self.samples else None

    def describe(self) -> str:
        """One line for the benchmark's output."""
        if self.mean is None:
            return f"GPU busy: {self.reason or 'not measured'}"
        return (f"GPU busy {self.mean:.1f} % (mean of {len(self.samples)} samples every "
                f"{self.period_ms} ms)")
