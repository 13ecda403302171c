"""``wsi-saliency layers [MODEL_DIR]``: the layers a model can be explained at."""

from __future__ import annotations

from pathlib import Path

import click

from wsi_saliency.errors import WsiSaliencyError

__all__ = ["layers"]


@click.command(name="layers")
@click.argument("model_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help="Also list modules that are not feature maps or run more than once.",
)
@click.option(
    "--trust-model-code",
    is_flag=True,
    help="Let the model folder run its own Python code ('file.py:callable' or "
    "'package.module:callable' architectures). Only for model folders you trust.",
)
def layers(model_dir: Path | None, show_all: bool, trust_model_code: bool) -> None:
    """List candidate saliency layers of MODEL_DIR (default: the bundled demo model).

    For each module that outputs a (C, h, w) feature map once per forward pass at the
    model's input size: its module path (use it with --layer), type, output shape,
    stride (input pixels per map pixel) and the number of strided convolutions after
    it (what hook smoothing acts on). The default layer is marked with '*'.
    """
    from wsi_saliency.models import load_model
    from wsi_saliency.saliency.layers import default_layer, list_layers

    try:
        model = load_model(model_dir, trust_code=trust_model_code)
        infos = list_layers(model, candidates_only=False)
        default = model.spec.saliency_layer or default_layer(infos)
    except WsiSaliencyError as exc:
        raise click.ClickException(str(exc)) from exc
    spec = model.spec
    size = spec.input_size
    click.echo(
        f"model: {spec.name} ({spec.architecture}); input {size}x{size} px "
        f"(patch {spec.patch_size} px at {spec.spacing:g} um/px)"
    )
    shown = infos if show_all else [i for i in infos if i.is_candidate]
    width = max([len(i.name) for i in shown] + [5])
    kwidth = max([len(i.kind) for i in shown] + [4])
    click.echo(
        f"  {'layer':<{width}}  {'type':<{kwidth}}  {'output (C x h x w)':<18}  "
        f"{'stride':>6}  strided convs after"
    )
    for info in shown:
        mark = "*" if info.name == default else " "
        shape = "x".join(str(v) for v in info.shape) if info.shape else "-"
        stride = f"{info.stride:g}" if info.stride is not None else "-"
        calls = f"  (runs {info.calls}x)" if info.calls != 1 else ""
        click.echo(
            f"{mark} {info.name:<{width}}  {info.kind:<{kwidth}}  {shape:<18}  "
            f"{stride:>6}  {info.strided_convs_after}{calls}"
        )
    click.echo(f"* default layer: {default}")
