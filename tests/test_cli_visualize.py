"""`build.py visualize` end to end: shards, resume, batch independence, checkpoints, bad input."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import timm
import torch

import build
from tests.conftest import ROOT, TINY_VIT

MODEL = ["--model", "vit_tiny_patch16_224", "--model-args", json.dumps(TINY_VIT)]
QUICK = ["--preset", "quick", "--steps", "6"]


def run(*argv):
    return build.main([str(a) for a in argv])


def viz_arrays(out):
    """Every shard's viz datasets, by shard path."""
    arrays = {}
    for path in sorted(out.rglob("*.h5")):
        with h5py.File(path) as f:
            arrays[path.relative_to(out).as_posix()] = {k: f["viz"][k][()] for k in f["viz"]}
    return arrays


def test_visualize_writes_shards_readable_with_bare_h5py_and_plain_timm(tmp_path):
    out = tmp_path / "atlas"
    assert run("visualize", *MODEL, "--random-init", *QUICK, "--layers", "1-2", "--units", "0-9",
               "--shard-units", "4", "--out", out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(s["layer"], s["unit_start"], s["unit_stop"]) for s in manifest["shards"]] == [
        (layer, a, b) for layer in (1, 2) for a, b in ((0, 4), (4, 8), (8, 10))]
    assert "visualize" in manifest["command"] and manifest["models"]["vit_tiny_patch16_224"]["weights"] == "random-init seed:0"
    # re-derive a stored activation from FORMAT.md alone: bare h5py + a plain hook on blocks[2].mlp.act
    with h5py.File(out / "shards/vit_tiny_patch16_224/ffn/L02/U00004-00008.h5") as f:
        assert (f.attrs["model"], f.attrs["site"], f.attrs["layer"], f.attrs["unit_start"], f.attrs["unit_stop"]) == (
            "vit_tiny_patch16_224", "ffn", 2, 4, 8)
        recipe = json.loads(f.attrs["recipe"])
        assert recipe["steps"] == 6 and recipe["preset"] == "quick" and f.attrs["seed"] == 0
        image, activation, seeds = f["viz/image"][1], f["viz/activation"][1], f["viz/seed"][()]
        assert f["viz/map"].shape == (4, 4, 4) and f["viz/map"].dtype == np.float16
        assert f["viz/loss"].shape == (4, len(json.loads(f["viz"].attrs["loss_steps"])))
        mean, std = json.loads(f.attrs["mean"]), json.loads(f.attrs["std"])
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", **TINY_VIT).eval()
    grabbed = []
    model.blocks[2].mlp.act.register_forward_hook(lambda m, i, o: grabbed.append(o))
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        model(x)
    assert abs(grabbed[0][0, 1:, 5].mean().item() - activation) < 1e-5
    assert len(set(seeds.tolist())) == 4


def test_rerun_skips_complete_shards_and_recomputes_only_a_missing_one(tmp_path, capsys):
    out = tmp_path / "atlas"
    args = ["visualize", *MODEL, "--random-init", *QUICK, "--layers", "0", "--units", "0-11",
            "--shard-units", "4", "--out", out]
    assert run(*args) == 0
    shards = sorted(out.rglob("*.h5"))
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    before = viz_arrays(out)
    capsys.readouterr()
    assert run(*args) == 0
    assert "visualized 0 units in 0 shards (12 were already done)" in capsys.readouterr().out
    shards[1].unlink()
    assert run(*args) == 0
    assert "visualized 4 units in 1 shards (8 were already done)" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == stamps[p] for p in (shards[0], shards[2]))
    after = viz_arrays(out)
    for shard in before:
        for name in before[shard]:
            np.testing.assert_array_equal(before[shard][name], after[shard][name])


def test_results_do_not_depend_on_the_batch_size(tmp_path):
    for batch in (1, 3, 16):
        assert run("visualize", *MODEL, "--random-init", *QUICK, "--layers", "1", "--units", "0-7",
                   "--batch-units", batch, "--out", tmp_path / f"b{batch}") == 0
    ref = viz_arrays(tmp_path / "b16")
    for batch in (1, 3):
        other = viz_arrays(tmp_path / f"b{batch}")
        for shard in ref:
            np.testing.assert_array_equal(ref[shard]["image"], other[shard]["image"])
            np.testing.assert_allclose(ref[shard]["activation"], other[shard]["activation"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoints_load_through_the_normal_path(tmp_path, suffix):
    torch.manual_seed(3)
    model = timm.create_model("vit_tiny_patch16_224", **TINY_VIT)
    ckpt = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(model.state_dict(), ckpt)
    else:
        from safetensors.torch import save_file
        save_file(model.state_dict(), str(ckpt))
    common = [*QUICK, "--layers", "0", "--units", "0-1"]
    assert run("visualize", *MODEL, "--checkpoint", ckpt, *common, "--out", tmp_path / "c") == 0
    assert run("visualize", *MODEL, "--random-init", "--init-seed", 3, *common, "--out", tmp_path / "r") == 0
    c, r = viz_arrays(tmp_path / "c"), viz_arrays(tmp_path / "r")
    for shard in c:
        np.testing.assert_array_equal(c[shard]["image"], r[shard]["image"])
    weights = json.loads((tmp_path / "c/manifest.json").read_text())["models"]["vit_tiny_patch16_224"]["weights"]
    assert weights.startswith(f"checkpoint:weights{suffix} sha256:")


@pytest.mark.parametrize("argv, message", [
    (["--model", "vit_bse_patch16_224", "--random-init"], "did you mean vit_base_patch16_224"),
    (["--model", "vit_tiny_patch16_224.augreg_in22k", "--random-init"], "no weights 'augreg_in22k'"),
    ([*MODEL, "--random-init", "--layers", "2-5"], r"--layers 2-5: \[3, 4, 5\] out of range \(valid: 0-2\)"),
    ([*MODEL, "--random-init", "--units", "100-200"], r"out of range \(valid: 0-127\)"),
    ([*MODEL, "--random-init", "--layers", "x"], "is not a selection"),
    ([*MODEL, "--random-init", "--site", "mlp"], "unknown site"),
    ([*MODEL], "pass --checkpoint FILE"),
    ([*MODEL, "--checkpoint", "/nonexistent.pth"], "does not exist"),
    ([*MODEL, "--random-init", "--name", "bad/name"], "cannot be used in an atlas"),
])
def test_bad_input_is_rejected_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "atlas"
    assert run("visualize", *argv, *QUICK, "--out", out) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists() or not any(out.rglob("*.h5"))


@pytest.mark.slow
def test_killed_run_resumes_without_recomputing_finished_shards(tmp_path):
    out = tmp_path / "atlas"
    argv = [sys.executable, "build.py", "visualize", *MODEL, "--random-init", "--preset", "quick", "--steps", "20",
            "--layers", "2", "--units", "0-47", "--shard-units", "8", "--batch-units", "8", "--out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.h5"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")}
    assert 2 <= len(finished) < 6
    subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True)
    shards = sorted(out.rglob("*.h5"))
    assert len(shards) == 6 and not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in finished.items())
    logs = [json.loads(line) for f in (out / "logs").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(logs) == 6  # each shard computed exactly once across the two runs


def test_out_of_memory_halves_the_batch_and_gives_the_same_results(tmp_path, monkeypatch):
    from builder import schedule
    from builder.models import ModelSource, load_model
    from builder.recipe import resolve_recipe
    from builder.schedule import VisualizeJob, run_visualize
    lm = load_model(ModelSource("vit_tiny_patch16_224", random_init=True), **TINY_VIT)
    real = schedule.optimize_units
    sizes = []

    def small_memory(lm_, layer, units, *args, pad_to=None):
        sizes.append(max(len(units), pad_to or 0))   # the batch as run, padded
        if sizes[-1] > 3:                       # a card that fits at most 3 units at a time
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(lm_, layer, units, *args, pad_to=pad_to)

    monkeypatch.setattr(schedule, "optimize_units", small_memory)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    recipe = resolve_recipe("quick", steps=3)
    run_visualize(lm, VisualizeJob(out=tmp_path / "oom", name="m", recipe=recipe, layers="1", units="0-9",
                                   batch_units=12, progress=False))
    assert sizes == [10, 5, 2, 2, 2, 2, 2]  # the failed batch halved twice, then balanced batches of 2
    monkeypatch.setattr(schedule, "optimize_units", real)
    run_visualize(lm, VisualizeJob(out=tmp_path / "plain", name="m", recipe=recipe, layers="1", units="0-9",
                                   batch_units=10, progress=False))
    a, b = viz_arrays(tmp_path / "oom"), viz_arrays(tmp_path / "plain")
    for shard in a:
        np.testing.assert_array_equal(a[shard]["image"], b[shard]["image"])
