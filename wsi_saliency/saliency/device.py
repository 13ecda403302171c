"""Which torch device a run uses."""

from __future__ import annotations

import torch

from wsi_saliency.errors import ConfigError

__all__ = ["resolve_device"]

def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"`` / ``"cpu"`` / ``"cuda[:N]"`` / ``"mps"`` into a device that exists."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"device {device!r} is not a torch device; use 'auto', 'cpu' "
                              "or 'cuda'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but CUDA is not available; use 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} asked for but Apple MPS is not available; use 'cpu'")
    return dev
