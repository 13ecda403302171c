"""Numeric precision and memory layout of the network: ``--precision auto|fp32|bf16|fp16``.

The network runs under :func:`torch.autocast` in the chosen precision; the attributions
are always multiplied, reduced over channels and accumulated in float32 (see
:mod:`wsi_saliency.saliency.engine`), and probabilities are a float32 softmax of the
logits.

Rule for ``auto`` (decided from ``benchmarks/bench_throughput.py``, see the README's
"Speed and precision"):

* CUDA: ``bf16`` when the GPU supports it (Ampere and newer), else ``fp32``;
* CPU: ``bf16`` when the processor has native bfloat16 instructions (``avx512_bf16`` or
  ``amx_bf16`` in ``/proc/cpuinfo``) and oneDNN is available: on such a CPU the accuracy
  guard held on the benchmark (max |dp| <= 0.01, saliency Pearson >= 0.99 against
  fp32); without them bf16 is emulated and slower than fp32;
* anything else (MPS, CPUs without native bf16): ``fp32``.

``fp16`` is CUDA only: on the CPU it is emulated (about 15x slower than fp32 on the
benchmark CPU), so it is refused there with a :class:`~wsi_saliency.errors.ConfigError`.
On CUDA the fp16 backward pass uses a fixed gradient scale so small gradients do not
underflow.

Channels-last memory layout is used for every 4-D convolutional network on CPU and
CUDA: it was faster in every precision measured (fp32 and bf16 on CPU) and gives the
same numbers up to float rounding.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch

from wsi_saliency.errors import ConfigError
from wsi_saliency.saliency.device import resolve_device

__all__ = [
    "FP16_GRAD_SCALE",
    "PRECISIONS",
    "autocast_context",
    "cpu_has_native_bf16",
    "precision_record",
    "resolve_precision",
    "torch_dtype",
]

#: Accepted values of ``inference.precision`` / ``--precision``.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

#: Factor the target score is multiplied by before an fp16 backward pass (and the
#: gradient divided by after it), so that small gradients do not flush to zero.
FP16_GRAD_SCALE = 1024.0

_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16).

    Parameters
    ----------
    cpuinfo
        The Linux ``/proc/cpuinfo`` file (a parameter for tests).

    Returns
    -------
    bool
        True when the CPU flags name ``avx512_bf16`` or ``amx_bf16`` and PyTorch's
        oneDNN backend is available. False on other systems (no ``/proc/cpuinfo``).
    """
    if not torch.backends.mkldnn.is_available():
        return False
    if not sys.platform.startswith("linux") and Path(cpuinfo) == Path("/proc/cpuinfo"):
        return False
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return any(f in flags for f in _NATIVE_BF16_FLAGS)
    return False


def _cuda_bf16(device: torch.device) -> bool:
    try:
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported())
    except (RuntimeError, AssertionError):  # pragma: no cover - needs a broken CUDA setup
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn a requested precision into the one used on ``device``.

    Parameters
    ----------
    precision
        ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    device
        The device the network runs on.

    Returns
    -------
    str
        ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see the module docstring for ``auto``).

    Raises
    ------
    ConfigError
        An unknown precision, ``fp16`` off CUDA, ``bf16`` on a GPU without bfloat16 or
        on MPS.
    """
    if precision not in PRECISIONS:
        raise ConfigError(
            f"precision {precision!r} is not one of {', '.join(PRECISIONS)}; use --precision auto"
        )
    kind = device.type
    if precision == "auto":
        if kind == "cuda":
            return "bf16" if _cuda_bf16(device) else "fp32"
        if kind == "cpu":
            return "bf16" if cpu_has_native_bf16() else "fp32"
        return "fp32"
    if precision == "fp16" and kind != "cuda":
        raise ConfigError(
            f"precision fp16 is for CUDA GPUs only (on {kind} it is emulated and very slow); "
            "use --precision bf16 or fp32"
        )
    if precision == "bf16" and kind == "mps":
        raise ConfigError("precision bf16 is not supported on MPS; use --precision fp32")
    if precision == "bf16" and kind == "cuda" and not _cuda_bf16(device):
        raise ConfigError(
            f"precision bf16: GPU {device} has no bfloat16 support; use --precision fp16 or fp32"
        )
    return precision


def precision_record(precision: str, device: str) -> dict[str, str | None]:
    """What a batch records of its precision (``batch-summary.json``).

    Parameters
    ----------
    precision
        The requested ``inference.precision``.
    device
        The requested ``inference.device``.

    Returns
    -------
    dict
        ``{"requested": precision, "used": resolved or None}``; ``used`` is None when it
        cannot be decided here (e.g. a CUDA device that only the Dask workers have);
        every slide's ``run.json`` records the precision it ran in.
    """

    try:
        used: str | None = resolve_precision(precision, resolve_device(device))
    except ConfigError:
        used = None
    return {"requested": precision, "used": used}


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a resolved precision (``fp32`` -> ``torch.float32``, ...)."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast context for a resolved precision (a no-op context for ``fp32``).

    Parameters
    ----------
    precision
        ``"fp32"``, ``"bf16"`` or ``"fp16"`` (already resolved).
    device
        The device the network runs on.

    Returns
    -------
    contextlib.AbstractContextManager
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch_dtype(precision))
