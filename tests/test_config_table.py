"""Each choice defined once, configs validated when built in Python, options from one table."""

from __future__ import annotations

import dataclasses
import typing

import click
import pytest

from wsi_saliency import config as config_mod
from wsi_saliency.cli import cli
from wsi_saliency.cli.options import option_overrides, param_name
from wsi_saliency.config import (
    OPTIONS,
    ConfigError,
    InferenceConfig,
    ModelConfig,
    OutputConfig,
    RunConfig,
    SlideConfig,
    TilingConfig,
    TissueConfig,
    build_config,
    config_keys,
)
from wsi_saliency.prefetch import DECODES
from wsi_saliency.readers import BACKENDS
from wsi_saliency.saliency.choices import PRECISIONS, RUN_METHODS, SMOOTHING_MODES
from wsi_saliency.stitch import BLENDS
from wsi_saliency.tissue import TISSUE_METHODS


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RunConfig(tiling=TilingConfig(overlap=5)), "tiling.overlap: 5.0 must be in [0, 1)"),
        (lambda: TilingConfig(tile_size=1), "tiling.tile_size: 1 must be >= 2"),
        (lambda: ModelConfig(method="gradcam"), "did you mean 'grad-cam'"),
        (lambda: ModelConfig(smoothing="bilinearr"), "model.smoothing: unknown value 'bilinearr'"),
        (lambda: SlideConfig(backend="vips"), "slide.backend: unknown value 'vips'"),
        (lambda: TissueConfig(method="triangle"), "tissue.method: unknown value 'triangle'"),
        (lambda: OutputConfig(blend="max"), "output.blend: unknown value 'max'"),
        (lambda: InferenceConfig(batch_size=0), "inference.batch_size: 0 must be >= 1"),
        (lambda: InferenceConfig(device="gpu"), "unknown device 'gpu'"),
        (lambda: ModelConfig(path=3), "model.path = 3 must be a string or null"),  # type: ignore[arg-type]
        (lambda: OutputConfig(saliency_range=(1.0, 0.0)), "vmin < vmax"),
    ],
)
def test_configs_built_in_python_are_validated(make: typing.Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert message in str(info.value) and str(info.value).startswith("config: ")


def test_values_are_coerced_like_yaml_ones() -> None:
    assert TilingConfig(overlap=0).overlap == 0.0 and type(TilingConfig(overlap=0).overlap) is float
    assert OutputConfig(saliency_range=[0, 1]).saliency_range == (0.0, 1.0)  # type: ignore[arg-type]
    # replace() validates too: a config cannot be made invalid after the fact
    with pytest.raises(ConfigError, match="min_tissue"):
        dataclasses.replace(TilingConfig(), min_tissue=2.0)


def test_each_choice_is_the_owners_tuple() -> None:
    """config re-exports the owners' tuples; the fields are annotated with their Literals."""
    assert config_mod.BACKENDS is BACKENDS
    assert config_mod.METHODS is RUN_METHODS
    assert config_mod.PRECISIONS is PRECISIONS
    assert config_mod.SMOOTHINGS is SMOOTHING_MODES
    assert config_mod.BLENDS is BLENDS
    assert config_mod.TISSUE_METHODS is TISSUE_METHODS
    assert config_mod.DECODES is DECODES
    literal_fields = {
        f"{section.name}.{name}": typing.get_args(hint)
        for section in dataclasses.fields(RunConfig)
        for name, hint in typing.get_type_hints(type(getattr(RunConfig(), section.name))).items()
        if typing.get_origin(hint) is typing.Literal
    }
    assert literal_fields == {
        "slide.backend": BACKENDS,
        "tissue.method": TISSUE_METHODS,
        "model.method": RUN_METHODS,
        "model.smoothing": SMOOTHING_MODES,
        "inference.precision": PRECISIONS,
        "inference.decode": DECODES,
        "output.blend": BLENDS,
        "output.geojson_compression": config_mod.GEOJSON_COMPRESSIONS,
    }


def test_option_table_names_real_keys_once() -> None:
    keys = config_keys()
    for row in OPTIONS:
        section, name = row.key.split(".", 1)
        assert name in keys[section], row.key
    assert len({o.key for o in OPTIONS}) == len(OPTIONS)
    assert len({o.flag for o in OPTIONS}) == len(OPTIONS)


@pytest.mark.parametrize("command", ["run", "tiles"])
def test_commands_have_exactly_their_table_rows(command: str) -> None:
    cmd = cli.commands[command]
    got = {p.name: p for p in cmd.params if isinstance(p, click.Option)}
    for row in OPTIONS:
        present = param_name(row.key) in got
        assert present == (command in row.commands), (command, row.key)
        if present:
            opt = got[param_name(row.key)]
            assert row.flag in opt.opts and opt.default is None
            hint = typing.get_type_hints(type(getattr(RunConfig(), row.key.split(".")[0])))[
                row.key.split(".", 1)[1]
            ]
            if typing.get_origin(hint) is typing.Literal:
                assert isinstance(opt.type, click.Choice)
                assert tuple(opt.type.choices) == typing.get_args(hint)


def test_option_values_become_config_keys() -> None:
    values = {param_name("model.target"): "1", param_name("tiling.overlap"): 0.5, "quiet": True}
    overrides = option_overrides(values)
    assert overrides == {"model.target": 1, "tiling.overlap": 0.5}
    assert build_config(None, overrides).model.target == 1
    assert option_overrides({param_name("model.target"): "tumor"}) == {"model.target": "tumor"}
