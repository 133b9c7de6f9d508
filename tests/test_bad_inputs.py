"""Bad input gets one line, exit code 2 and the fix named; no traceback; finished work untouched.

Every case runs the command line (``build.main``) against a copy of a finished atlas and checks the
exit code, that stderr is one line, that no traceback was printed, and that every file that existed
before has the same sha256 after.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import build
from tests.conftest import ROOT, TINY_MODEL, TINY_VIT
from tests.helpers import assert_refused, digests, run_cli

TINY_ARGS = json.dumps(TINY_VIT)


@pytest.fixture
def atlas_copy(small_atlas, tmp_path):
    """A copy of a finished atlas (visualized, probed, rendered) and the sha256 of all its files."""
    folder = tmp_path / "atlas"
    shutil.copytree(small_atlas[0], folder)
    return folder, digests(folder)


def unchanged(atlas_copy) -> None:
    folder, before = atlas_copy
    after = digests(folder)
    assert {k: v for k, v in after.items() if k in before} == before


def visualize(out, *extra, model=TINY_MODEL):
    return run_cli("visualize", *model, "--preset", "quick", "--steps", "2", "--layers", "0", "--units", "0-3",
                   "--out", str(out), *extra)


# -- model and checkpoint -------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    ('[1, 2]', "JSON object"),
    ('{"not_a_timm_argument": 3}', "does not accept"),
    ("{oops", "not JSON"),
])
def test_bad_model_args(atlas_copy, args, needle):
    model = ["--model", "vit_tiny_patch16_224", "--random-init", "--model-args", args]
    assert_refused(visualize(atlas_copy[0], model=model), needle)
    unchanged(atlas_copy)


def _checkpoint(tmp_path, kind: str) -> Path:
    from safetensors.torch import save_file
    path = tmp_path / ("w.safetensors" if "safetensors" in kind else "w.pth")
    if kind == "folder":
        path = tmp_path / "weights-folder.safetensors"
        path.mkdir()
        return path
    if kind == "empty safetensors":
        path.write_bytes(b"")
    elif kind == "truncated safetensors":
        save_file({"w": torch.zeros(64, 64)}, str(path))
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "garbled safetensors":
        path.write_bytes(os.urandom(4096))
    elif kind == "garbage pth":
        path.write_bytes(b"this is not a checkpoint" * 50)
    return path


@pytest.mark.parametrize("kind", ["empty safetensors", "truncated safetensors", "garbled safetensors", "garbage pth",
                                  "folder"])
def test_bad_checkpoints(atlas_copy, tmp_path, kind):
    path = _checkpoint(tmp_path, kind)
    model = ["--model", "vit_tiny_patch16_224", "--checkpoint", str(path), "--model-args", TINY_ARGS]
    result = visualize(atlas_copy[0], model=model)
    assert_refused(result, "is a folder" if kind == "folder" else "could not load")
    assert "weights_only=False" not in result[2] and "trust" not in result[2]
    unchanged(atlas_copy)


def test_unknown_model_names_close_matches(atlas_copy):
    assert_refused(visualize(atlas_copy[0], model=["--model", "vit_tiny_patch16_22", "--random-init"]), "did you mean")
    unchanged(atlas_copy)


# -- flags ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, needle", [
    (["--precision", "fp16"], "invalid choice"),
    (["--compile", "maybe"], "invalid choice"),
    (["--batch-units", "0"], "at least 1"),
    (["--shard-units", "0"], "at least 1"),
    (["--layers", "99"], "out of range"),
    (["--units", "3-1"], "not a selection"),
    (["--steps", "0"], "at least 1"),
    (["--device", "tpu"], "--device"),
    (["--preset", "fast"], "invalid choice: 'fast'"),
    (["--jitter", "wide"], "not N (pixels) or P%"),
    (["--tv-norm", "l3"], "invalid choice"),
])
def test_bad_flags(atlas_copy, extra, needle):
    assert_refused(visualize(atlas_copy[0], *extra), needle)
    unchanged(atlas_copy)


# -- output folders -------------------------------------------------------------------------------

def test_out_is_a_file_or_someone_elses_folder(atlas_copy, tmp_path):
    notes = tmp_path / "my-notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("mine")
    assert_refused(visualize(notes), "not empty and holds no atlas")
    assert (notes / "thesis.txt").read_text() == "mine" and sorted(p.name for p in notes.iterdir()) == ["thesis.txt"]
    assert_refused(visualize(notes / "thesis.txt"), "is a file")
    unchanged(atlas_copy)


def test_a_foreign_manifest_fails_before_any_work(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "manifest.json").write_text("[1, 2, 3]")
    assert_refused(visualize(folder), "not an atlas manifest")
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]


@contextlib.contextmanager
def read_only_folder(tmp_path: Path):
    """A folder nobody can write into: chmod for ordinary users; for root (whom permissions do not
    bind), a read-only tmpfs mount."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only folder as root here ({mounted.stderr.decode().strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_out_fails_before_any_work(tmp_path):
    with read_only_folder(tmp_path) as ro:
        assert_refused(visualize(ro / "atlas"), "cannot create --out")
        assert_refused(visualize(ro), "cannot write into")
        assert_refused(run_cli("render", str(ROOT / "tests"), "--out", str(ro / "web")), "cannot create")


def test_render_into_someone_elses_folder(atlas_copy, tmp_path):
    mine = tmp_path / "www"
    (mine / "assets").mkdir(parents=True)
    (mine / "index.html").write_text("<h1>my page</h1>")
    (mine / "assets" / "atlas.css").write_text("body{}")
    before = digests(mine)
    assert_refused(run_cli("render", str(atlas_copy[0]), "--out", str(mine)), "not rendered by ViT Atlas")
    assert digests(mine) == before
    unchanged(atlas_copy)
    fresh = tmp_path / "fresh"
    assert run_cli("render", str(atlas_copy[0]), "--out", str(fresh))[0] == 0
    assert run_cli("render", str(atlas_copy[0]), "--site", str(fresh))[0] == 0  # rendered again; --site: before the glossary


def test_make_dataset_into_someone_elses_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"x")
    assert_refused(run_cli("make-dataset", "--out", str(folder), "--n", "4"), "not empty")
    assert sorted(p.name for p in folder.iterdir()) == ["cat.jpg"]


# -- image folders --------------------------------------------------------------------------------

def test_a_folder_of_text_files_named_jpg(atlas_copy, tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    for i in range(3):
        (fake / f"{i}.jpg").write_text("not an image")
    result = run_cli("probe", *TINY_MODEL, "--images", str(fake), "--workers", "0", "--layers", "0",
                     "--out", str(tmp_path / "new"))
    assert_refused(result, "could be decoded", "nothing was written")
    assert not (tmp_path / "new" / "dataset.h5").exists()
    assert_refused(run_cli("probe", *TINY_MODEL, "--images", str(tmp_path / "nowhere"), "--out", str(atlas_copy[0])))
    unchanged(atlas_copy)


def test_non_utf8_names_and_symlink_loops_in_the_image_folder(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("1.png", "2.png"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "a" / name)
    os.symlink("..", folder / "a" / "loop")                        # a link back up: a loop
    os.symlink(str(folder / "a"), folder / "b")                     # a second path to the same folder
    bad = os.path.join(os.fsencode(folder / "a"), b"caf\xe9.png")   # Latin-1 bytes: not UTF-8
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(bad.decode("utf-8", "surrogateescape"))
    rc, out, err = run_cli("probe", *TINY_MODEL, "--images", str(folder), "--workers", "0", "--layers", "0",
                           "--k", "2", "--out", str(tmp_path / "atlas"))
    assert rc == 0 and "Traceback" not in out + err, err
    assert "not valid UTF-8" in out and "2 images" in out
    from atlas.dataset import Dataset
    assert Dataset(tmp_path / "atlas" / "dataset.h5").paths == ["a/1.png", "a/2.png"]


# -- specs ----------------------------------------------------------------------------------------

SPEC = """
[atlas]
name = "t"
out = "out"
[recipe]
preset = "quick"
{recipe}
[build]
{build}
[[models]]
name = "vit_tiny_patch16_224"
random_init = true
probe = false
{model}
"""


@pytest.mark.parametrize("recipe, build_, model, needle", [
    ('steps = "many"', "", "", "steps must be a whole number"),
    ("", 'shard_units = "lots"', "", "shard_units must be a whole number"),
    ("", "", 'sites = "ffn"', 'sites must be a list of strings'),
    ("", "", "visualize = 1", "visualize must be true or false"),
    ("tv = true", "", "", "tv must be a number"),
    ("betas = [0.5]", "", "", "betas must be two numbers"),
    ("", "", "bogus = 1", "unknown keys ['bogus']"),
])
def test_bad_spec_values(tmp_path, recipe, build_, model, needle):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(recipe=recipe, build=build_, model=model))
    assert_refused(run_cli("run", str(spec)), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.toml"]


def test_models_as_a_string_binary_and_folder_specs(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text('[atlas]\nname = "t"\nout = "out"\nmodels = "vit"\n')
    assert_refused(run_cli("run", str(spec)), "unknown keys ['models']")
    spec.write_text('models = "vit"\n[atlas]\nname = "t"\nout = "out"\n')
    assert_refused(run_cli("run", str(spec)), "[[models]] tables")
    binary = tmp_path / "spec.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    assert_refused(run_cli("run", str(binary)), "not a text file")
    assert_refused(run_cli("plan", str(tmp_path)), "is a folder")
    (tmp_path / "empty").mkdir()
    assert_refused(run_cli("finalize", str(tmp_path / "empty")), "has no spec.toml")


def test_spec_copy_is_valid_toml_for_any_value(tmp_path):
    from builder.spec import dump_spec, load_spec
    import tomllib
    spec = tmp_path / "s.toml"
    spec.write_text('[atlas]\nname = "t"\nout = "o"\ndescription = "quote \\" backslash \\\\ tab \\t é ☃"\n'
                    '[[models]]\nname = "vit_tiny_patch16_224"\nrandom_init = true\nprobe = false\n')
    loaded = load_spec(spec)
    text = dump_spec(loaded)
    again = tomllib.loads(text)
    assert again["atlas"]["description"] == 'quote " backslash \\ tab \t é ☃'
    assert "None" not in text and "batch_units" not in text  # unset values are left out, not "None"


# -- serve ----------------------------------------------------------------------------------------

def test_serve_port_errors(atlas_copy):
    assert_refused(run_cli("serve", str(atlas_copy[0]), "--port", "70000"), "between 0 and 65535")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert_refused(run_cli("serve", str(atlas_copy[0]), "--port", str(busy.getsockname()[1])), "already in use")
    assert_refused(run_cli("serve", str(atlas_copy[0].parent)), "no rendered website")
    unchanged(atlas_copy)


# -- other commands -------------------------------------------------------------------------------

def test_verify_and_analyze_bad_targets(atlas_copy, small_atlas, tmp_path):
    images = next(Path(small_atlas[0]).parent.glob("imgs"))
    assert_refused(run_cli("verify", str(tmp_path / "nothing")), "problems")
    assert_refused(run_cli("analyze", "everything", *TINY_MODEL, "--out", str(atlas_copy[0])), "unknown analysis")
    assert_refused(run_cli("probe", *TINY_MODEL, "--images", str(images), "--k", "0", "--out", str(atlas_copy[0])),
                   "at least 1")
    unchanged(atlas_copy)


def test_internal_errors_say_they_are_bugs(monkeypatch):
    import builder.cli

    def broken(args, command):
        raise ZeroDivisionError("a bug")
    parser = builder.cli.parser
    monkeypatch.setattr(builder.cli, "parser", lambda prog=None: _with_verify(parser(prog), broken))
    rc, out, err = run_cli("verify", "x")
    assert rc == 1 and "Traceback" in err and "internal error" in err.splitlines()[-1]


def _with_verify(p, fn):
    for action in p._subparsers._group_actions:
        action.choices["verify"].set_defaults(run=fn)
    return p


def test_verify_names_files_the_manifest_does_not_list(atlas_copy):
    folder, _ = atlas_copy
    assert build.main(["verify", str(folder)]) == 0
    (folder / "shards" / "notes.txt").write_text("mine")
    (folder / "stray.bin").write_bytes(b"\x00" * 10)
    rc, out, err = run_cli("verify", str(folder))
    assert rc == 2 and "shards/notes.txt: not listed in the manifest" in out and "stray.bin: not listed" in out
