"""ViT Atlas installed as people install tools (issue 34): the wheel, installed (not editable) into a fresh
virtual environment whose dependencies come from this one, run from a folder outside the checkout: the
`vit-atlas` command, the packaged demo spec, weights and SAE, and a small atlas built, rendered and
verified with it. The wheel's file list holds what the package needs at run time."""
from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY_MODEL
from tests.helpers import ENV, image_folder

pytestmark = pytest.mark.slow

# what commands read at run time, by path inside the wheel
NEEDED = ["builder/cli.py", "builder/__main__.py", "builder/demo/demo.toml",
          "builder/demo/weights/vit_atlas_demo.safetensors", "builder/demo/weights/resnet_atlas_demo.safetensors",
          "builder/demo/weights/demo_weights.json", "builder/demo/weights/l3-topk/cfg.json",
          "builder/demo/weights/l3-topk/sae_weights.safetensors", "builder/demo/weights/clip_atlas_demo.safetensors",
          "builder/labels/imagenet_wordnet.json", "site_templates/base.html",
          "site_templates/unit.html", "site_templates/moved.js", "site_templates/static/atlas.js",
          "site_templates/static/atlas.css", "atlas/__init__.py"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, env=ENV, cwd=out)
    (found,) = out.glob("vit_atlas-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed and this environment's packages beside it (a
    plain path: the editable checkout's finder in there is never run); returns its bin folder."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(pip, check=True, env=ENV)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies-from-the-test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def run(bin_: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in ENV.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(bin_ / argv[0]), *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_wheel_holds_what_commands_read(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in NEEDED if n not in names] == []
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "vit-atlas = builder.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    assert not any(n.startswith(("tests/", "benchmarks/", "examples/")) for n in names)


def test_the_installed_command_builds_renders_and_verifies_an_atlas(installed, tmp_path):
    work = tmp_path / "elsewhere"                              # outside the checkout: nothing of it importable
    work.mkdir()
    where = run(installed, "python", "-c", "import atlas, builder.demo.build as d; print(atlas.__file__); "
                "print(d.DEMO_SPEC); print(atlas.__version__)", cwd=work)
    assert where.returncode == 0, where.stderr
    module, spec, version = where.stdout.split()
    assert str(installed.parent) in module and str(installed.parent) in spec and str(ROOT) not in module + spec
    got = run(installed, "vit-atlas", "--version", cwd=work)
    assert got.returncode == 0 and got.stdout.strip() == f"vit-atlas {version}" and version == _pyproject_version()
    help_ = run(installed, "vit-atlas", "--help", cwd=work)
    assert help_.returncode == 0 and "vit-atlas" in help_.stdout and "visualize" in help_.stdout
    plan = run(installed, "vit-atlas", "plan", spec, "--no-calibrate", cwd=work)
    assert plan.returncode == 0 and "vit_atlas_demo" in plan.stdout and "sae-l3-topk" in plan.stdout, plan.stderr
    bad = run(installed, "vit-atlas", "visualize", "--model", "x", cwd=work)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("(vit-atlas visualize --help lists the flags)")
    images = image_folder(work / "images", ("a", "b"), 4, 32)
    out = work / "atlas"
    steps = [["visualize", *TINY_MODEL, "--preset", "quick", "--steps", "2", "--layers", "0-1", "--units", "0-7",
              "--out", str(out)],
             ["probe", *TINY_MODEL, "--images", str(images), "--layers", "0-1", "--units", "0-7", "--k", "3",
              "--workers", "0", "--out", str(out)],
             ["render", str(out)], ["verify", str(out)]]
    for argv in steps:
        done = run(installed, "vit-atlas", *argv, cwd=work)
        assert done.returncode == 0, (argv[0], done.stderr[-2000:])
    assert (out / "site" / "assets" / "atlas.js").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["builder_version"] == version and manifest["history"][0]["command"].startswith("vit-atlas visualize")
    logs = [json.loads(line) for f in (out / "logs").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert logs and {entry["version"] for entry in logs} == {version}


def test_python_dash_m_and_build_py_are_the_same_command_line(tmp_path):
    """`python -m builder` and `python build.py` (a checkout) say the same, each naming itself."""
    env = dict(ENV, PYTHONPATH=str(ROOT))
    outputs = {}
    for name, argv in (("python -m builder", [sys.executable, "-m", "builder"]),
                       ("python build.py", [sys.executable, str(ROOT / "build.py")])):
        done = subprocess.run([*argv, "render", str(tmp_path / "missing")], capture_output=True, text=True, env=env,
                              cwd=tmp_path)
        assert done.returncode == 2
        outputs[name] = done.stderr.replace(name, "PROGRAM")
        version = subprocess.run([*argv, "--version"], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert version.stdout.strip() == f"vit-atlas {_pyproject_version()}"
    assert outputs["python -m builder"] == outputs["python build.py"]


def _pyproject_version() -> str:
    try:
        import tomllib
    except ImportError:              # Python 3.10
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
