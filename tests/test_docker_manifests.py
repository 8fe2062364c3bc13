"""The container and cluster manifests cannot be built here; check what can be checked: they
parse, name the right kinds and versions, install torch before the package, and run the
training pipeline that exists in this repository."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name,index", [("Dockerfile", "whl/cpu"), ("Dockerfile.cuda", "cu")])
def test_dockerfile(name: str, index: str) -> None:
    ins = _instructions(DOCKER / name)
    assert ins[0][0] == "FROM", "a Dockerfile starts with FROM"
    known = {"FROM", "RUN", "COPY", "ENV", "ARG", "WORKDIR", "CMD", "ENTRYPOINT", "LABEL",
             "EXPOSE", "USER"}
    assert {w for w, _ in ins} <= known, [w for w, _ in ins if w not in known]
    if name == "Dockerfile":
        assert "python:3.11" in ins[0][1]
    else:
        assert "cuda" in ins[0][1].lower()
    runs = [(i, arg) for i, (w, arg) in enumerate(ins) if w == "RUN"]
    torch_at = [i for i, arg in runs if re.search(r"pip install .*\"?torch==", arg)]
    pkg_at = [i for i, arg in runs if re.search(r"pip install (-e )?\.(\s|$|\[)", arg)]
    assert torch_at and pkg_at, "torch and the package are both pip-installed"
    assert torch_at[0] < pkg_at[0], "torch is installed before the package"
    torch_cmd = dict(runs)[torch_at[0]]
    assert "--index-url" in torch_cmd
    args = {a.split("=")[0]: a.split("=", 1)[1] for w, a in ins if w == "ARG" and "=" in a}
    assert index in (torch_cmd + " " + " ".join(args.values()))
    # Everything the image needs to run the pipeline is copied in before or after install.
    copied = " ".join(a for w, a in ins if w == "COPY")
    for what in ("pyproject.toml", "ram_wsi", "configs", "pipelines"):
        assert what in copied
    assert any(w == "CMD" and "pipelines/train.py" in a for w, a in ins)


def test_rayjob_manifest() -> None:
    job = yaml.safe_load((DOCKER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1"
    assert job["kind"] == "RayJob"
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0].startswith("python")
    script = next(a for a in argv if a.endswith("train.py"))
    assert script.endswith("pipelines/train.py")
    assert (ROOT / "pipelines" / "train.py").is_file()
    cfg = argv[argv.index("--config") + 1]
    assert (ROOT / cfg.replace("/app/", "")).is_file(), cfg
    # Every --set names a real config key (the pipeline would reject it otherwise).
    from ram_wsi.config import load_config

    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    load_config(ROOT / cfg.replace("/app/", ""), sets)
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["resources"]["limits"].get("nvidia.com/gpu") == 1
    workers = cluster["workerGroupSpecs"]
    assert workers and all(w["replicas"] >= 1 for w in workers)
    for w in workers:
        c = w["template"]["spec"]["containers"][0]
        assert c["image"] and c["resources"]["limits"]["cpu"]
    import ray

    assert cluster["rayVersion"] == ray.__version__, "the manifest pins the installed Ray"


def test_rayignore_keeps_upload_small() -> None:
    patterns = (ROOT / ".rayignore").read_text().split()
    for p in (".venv/", "data/", "runs/", "*.zarr/", "*.pt"):
        assert p in patterns
