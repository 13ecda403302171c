"""The notebook in notebooks/ runs against real demo outputs (docs that cannot rot)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest
from click.testing import CliRunner

from wsi_saliency.cli import cli

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "explore_outputs.ipynb"


@pytest.mark.slow
def test_explore_outputs_notebook_runs_on_demo_outputs(tmp_path: Path) -> None:
    matplotlib.use("Agg")
    out = tmp_path / "demo-out"
    res = CliRunner().invoke(cli, ["demo", "--out", str(out), "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    nb = json.loads(NOTEBOOK.read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert '"../demo-out/' in code
    code = code.replace('"../demo-out/', f'"{out}/')
    namespace: dict[str, object] = {}
    exec(compile(code, str(NOTEBOOK), "exec"), namespace)
    # the notebook's geometry cell picked the most tumour-like heatmap pixel
    assert float(namespace["prob"][namespace["i"], namespace["j"]]) > 0.5  # type: ignore[index]
    assert namespace["labels"][:2] == ["probability_tumor", "saliency"]  # type: ignore[index]
