"""Model-parameter randomisation test (Adebayo et al., "Sanity Checks for Saliency Maps", 2018).

Cascading randomisation: the network's top-level blocks are re-initialised one after
another from the logits towards the input (for a torchvision ResNet ``fc``,
``layer4``, ``layer3``, ``layer2``, ``layer1``, ``stem``), the maps are recomputed after
every step, and compared with the maps of the trained network. A map that depends on
what the network learned decorrelates as more is randomised. The work is done on a deep
copy: the caller's model is never touched.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from wsi_saliency.models import LoadedModel

__all__ = ["RandomisationStep", "copy_model", "randomisation_steps", "randomise"]


@dataclass(frozen=True)
class RandomisationStep:
    """One step of the cascade: a name and the module paths re-initialised by it."""

    name: str
    modules: tuple[str, ...]


def copy_model(model: LoadedModel) -> LoadedModel:
    """A deep copy of the network with the same spec and surrogate reference (the original
    stays as it is)."""
    return dataclasses.replace(model, module=copy.deepcopy(model.module))


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def randomisation_steps(module: nn.Module) -> list[RandomisationStep]:
    """The cascade of a network, from the logits back to the input.

    Generic rule: the top-level children that hold parameters, in reverse registration
    order (descending into a lone wrapper child, e.g. ``nn.Sequential(net)``); leaf
    modules at the very start (torchvision's ``conv1``, ``bn1``) form one step called
    ``stem``.

    Returns
    -------
    list of RandomisationStep
        First step = closest to the logits.
    """
    prefix = ""
    root = module
    while True:
        kids = [(n, m) for n, m in root.named_children() if _has_params(m)]
        if len(kids) == 1 and any(True for _ in kids[0][1].children()):
            prefix += kids[0][0] + "."
            root = kids[0][1]
            continue
        break
    kids = [(prefix + n, m) for n, m in root.named_children() if _has_params(m)]
    lead: list[str] = []
    for name, m in kids:
        if any(True for _ in m.children()):
            break
        lead.append(name)
    steps: list[RandomisationStep] = []
    if len(lead) > 1:
        steps.append(RandomisationStep("stem", tuple(lead)))
        kids = kids[len(lead):]
    steps.extend(RandomisationStep(name, (name,)) for name, _ in kids)
    steps.reverse()
    return steps


@torch.no_grad()
def randomise(module: nn.Module, paths: tuple[str, ...], seed: int) -> None:
    """Re-initialise every parameter (and buffer of normalisation layers) under ``paths``.

    Each submodule with a ``reset_parameters`` method gets it (PyTorch's default
    initialisation: Kaiming-uniform convolutions and linear layers, BatchNorm reset to
    weight 1, bias 0 and fresh running statistics); any parameter left over is drawn
    from ``N(0, 0.02^2)``. Seeded, so the cascade is reproducible; the global RNG state
    is restored afterwards.
    """
    mods = dict(module.named_modules())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for path in paths:
            sub = mods[path]
            device = next(sub.parameters()).device
            sub.to("cpu")  # the CPU generator draws the same numbers on every device
            done: set[int] = set()
            for m in sub.modules():
                reset = getattr(m, "reset_parameters", None)
                if callable(reset):
                    reset()
                    done.update(id(p) for p in m.parameters(recurse=False))
            for p in sub.parameters():
                if id(p) not in done:
                    p.copy_(torch.randn(p.shape, dtype=p.dtype).mul_(0.02))
            sub.to(device)
