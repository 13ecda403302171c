"""Config loading, merging (command line > YAML > defaults), validation and hashing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from wsi_saliency.config import (
    HASH_EXCLUDED_KEYS,
    METHODS,
    ConfigError,
    RunConfig,
    build_config,
    config_from_dict,
    config_hash,
    config_to_dict,
    load_config,
)
from wsi_saliency.errors import WsiSaliencyError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_without_anything() -> None:
    assert build_config() == RunConfig()
    assert build_config({}, {}) == RunConfig()


def test_precedence_cli_over_yaml_over_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tiling:\n  overlap: 0.5\n  tile_size: 256\nmodel:\n  method: grad-cam\n",
    )
    cfg = build_config(
        load_config(path),
        {"tiling.overlap": 0.25, "model.layer": "layer3", "inference.batch_size": None},
        source=path,
    )
    assert cfg.tiling.overlap == 0.25  # command line wins
    assert cfg.tiling.tile_size == 256  # YAML wins over default
    assert cfg.model.method == "grad-cam"
    assert cfg.model.layer == "layer3"
    assert cfg.inference.batch_size == 32  # None = not given: default stays
    assert cfg.tiling.spacing is None  # left to the model


def test_values_are_coerced_to_field_types(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "slide:\n  mpp: 1e-1\n"  # PyYAML reads 1e-1 as a string (YAML 1.1)
        "tiling:\n  spacing: 1\n  tile_size: 224.0\n"
        "output:\n  saliency_range: [0, 2]\nmodel:\n  target: 1\n",
    )
    cfg = build_config(load_config(path), {}, source=path)
    assert cfg.slide.mpp == pytest.approx(0.1)
    assert isinstance(cfg.tiling.spacing, float) and cfg.tiling.spacing == 1.0
    assert isinstance(cfg.tiling.tile_size, int) and cfg.tiling.tile_size == 224
    assert cfg.output.saliency_range == (0.0, 2.0)
    assert cfg.model.target == 1
    assert build_config({"model": {"target": "tumor"}}).model.target == "tumor"


def test_empty_yaml_and_empty_sections(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == {}
    assert load_config(write(tmp_path, "# only a comment\n", "c.yaml")) == {}
    assert build_config({"tiling": None}) == RunConfig()


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("tilng:\n  overlap: 0.5\n", "unknown section 'tilng'; did you mean 'tiling'?"),
        (
            "tiling:\n  tilesize: 224\n",
            "unknown key 'tiling.tilesize'; did you mean 'tiling.tile_size'?",
        ),
        ("tiling:\n  batch_size: 4\n", "did you mean 'inference.batch_size'?"),
        ("model:\n  layr: layer3\n", "did you mean 'model.layer'?"),
        ("tiling:\n  overlap: 1.0\n", "tiling.overlap: 1.0 must be in [0, 1)"),
        ("tiling:\n  overlap: -0.1\n", "must be in [0, 1)"),
        ("tiling:\n  overlap: .nan\n", "must be in [0, 1)"),
        ("tiling:\n  min_tissue: 1.5\n", "tiling.min_tissue: 1.5 must be in [0, 1]"),
        ("tiling:\n  tile_size: 1\n", "tiling.tile_size: 1 must be >= 2"),
        ("tiling:\n  spacing: 0\n", "tiling.spacing: 0.0 must be > 0"),
        ("inference:\n  batch_size: 0\n", "inference.batch_size: 0 must be >= 1"),
        ("inference:\n  batch_size: many\n", "inference.batch_size = 'many' must be an integer"),
        ("inference:\n  batch_size: 2.5\n", "must be an integer"),
        ("inference:\n  batch_size: true\n", "must be an integer"),
        ("inference:\n  workers: -1\n", "inference.workers: -1 must be >= 0"),
        ("inference:\n  device: gpu\n", "unknown device 'gpu'"),
        ("inference:\n  autocast: 'yes'\n", "inference.autocast = 'yes' must be true or false"),
        ("model:\n  method: gradcam\n", "did you mean 'grad-cam'?"),
        ("model:\n  smoothing: backward\n", "unknown value 'backward'"),
        (
            "slide:\n  backend: libvips\n",
            "unknown value 'libvips' (choose from auto, openslide, tiffslide, pyvips)",
        ),
        ("slide:\n  mpp: -0.25\n", "slide.mpp: -0.25 must be > 0"),
        ("slide:\n  mpp_sidecar: mpp.json\n", "must contain {stem} or {name}"),
        ("tissue:\n  method: triangle\n", "unknown value 'triangle'"),
        ("output:\n  saliency_range: [1, 0]\n", "vmin < vmax"),
        ("output:\n  saliency_range: [1]\n", "must be a list of 2 numbers or null"),
        ("output:\n  blend: gaussian\n", "unknown value 'gaussian'"),
        ("tiling: [1, 2]\n", "section 'tiling' must be a mapping"),
    ],
)
def test_bad_yaml_values_give_one_line_errors_naming_the_file(
    tmp_path: Path, yaml_text: str, expected: str
) -> None:
    path = write(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as info:
        build_config(load_config(path), {}, source=path)
    msg = str(info.value)
    assert expected in msg
    assert str(path) in msg
    assert "\n" not in msg
    assert isinstance(info.value, ValueError) and isinstance(info.value, WsiSaliencyError)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"tiling.overlap": 1.0}, "command line: --overlap: 1.0 must be in [0, 1)"),
        ({"inference.batch_size": 0}, "command line: --batch-size: 0 must be >= 1"),
        ({"inference.device": "cuda0"}, "command line: --device: unknown device 'cuda0'"),
        ({"model.method": "saliency"}, "command line: --method: unknown value 'saliency'"),
        ({"model.path": 3}, "command line: --model = 3 must be a string"),
        ({"tiling.bogus": 1}, "command line: unknown key 'tiling.bogus'"),
        ({"overlap": 0.5}, "must be 'section.key'"),
    ],
)
def test_bad_command_line_values_name_the_option(overrides: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({}, overrides)
    assert expected in str(info.value)


def test_devices_accepted() -> None:
    for dev in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert build_config({}, {"inference.device": dev}).inference.device == dev


def test_every_method_name_is_accepted() -> None:
    for m in METHODS:
        assert build_config({"model": {"method": m}}).model.method == m


def test_load_config_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot be read"):
        load_config(missing)
    bad = write(tmp_path, "tiling:\n  overlap: [0.5\n", "bad.yaml")
    with pytest.raises(ConfigError, match=r"bad\.yaml: .* at line \d+, column \d+"):
        load_config(bad)
    lst = write(tmp_path, "- 1\n- 2\n", "list.yaml")
    with pytest.raises(ConfigError, match=r"list\.yaml: top level must be a mapping"):
        load_config(lst)


def test_config_to_dict_round_trips() -> None:
    cfg = build_config(
        {
            "tiling": {"overlap": 0.5, "tile_size": 256, "spacing": 1.0},
            "output": {"saliency_range": [-1, 1]},
            "model": {"target": "tumor", "layer": "features.3"},
        }
    )
    data = config_to_dict(cfg)
    assert data["output"]["saliency_range"] == [-1.0, 1.0]
    import json

    assert json.loads(json.dumps(data)) == data
    assert config_from_dict(data) == cfg
    assert set(data) == {f.name for f in dataclasses.fields(RunConfig)}


def test_config_hash_changes_only_with_output_relevant_keys() -> None:
    base = build_config({})
    h = config_hash(base, "w" * 64)
    assert len(h) == 64 and h == config_hash(build_config({}), "w" * 64)
    assert config_hash(base, "x" * 64) != h
    for overrides in (
        {"model.layer": "layer3"},
        {"model.method": "grad-cam"},
        {"model.smoothing": "none"},
        {"tiling.overlap": 0.5},
        {"tiling.tile_size": 256},
        {"slide.mpp": 0.25},
        {"output.threshold": 0.7},
    ):
        assert config_hash(build_config({}, overrides), "w" * 64) != h, overrides
    # Keys that do not change outputs do not change the hash.
    assert HASH_EXCLUDED_KEYS
    for overrides in (
        {"model.path": "/models/x"},
        {"inference.batch_size": 8},
        {"inference.workers": 0},
    ):
        assert config_hash(build_config({}, overrides), "w" * 64) == h, overrides


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load_and_validate(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.lstrip().startswith("#"), "each shipped config opens with a comment"
    cfg = build_config(load_config(path), {}, source=path)
    assert isinstance(cfg, RunConfig)


def test_shipped_configs_exist() -> None:
    assert {p.name for p in CONFIGS} >= {"camelyon16.yaml", "inhouse-example.yaml", "demo.yaml"}


def test_inhouse_config_documents_the_sidecar() -> None:
    path = REPO / "configs" / "inhouse-example.yaml"
    cfg = build_config(load_config(path), {}, source=path)
    assert cfg.slide.mpp_sidecar == "{stem}.mpp.json"
    assert cfg.slide.mpp is None
    text = path.read_text(encoding="utf-8")
    assert '{"mpp": 0.25}' in text and '"mpp_x"' in text and '"mpp_y"' in text


def test_demo_yaml_matches_the_demo_command() -> None:
    from wsi_saliency.cli.demo import demo_config

    path = REPO / "configs" / "demo.yaml"
    assert build_config(load_config(path), {}, source=path) == build_config(demo_config())
