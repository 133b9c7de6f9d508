"""How the live view runs in a browser (issue 32): an atlas with a live model, rendered, served and opened in
headless Chromium. Measures the published model's bytes, the time from navigation until the model is ready
(median of three loads), the time per image (median over the images, after one warm-up), the tab's memory (the
resident set of the page's renderer process, from /proc), the threads onnxruntime ran, and, against PyTorch
(timm's FFN modules by forward hooks, fp32 weights), whether every FFN layer's top-20 atlas units by mean are the
page's and the largest difference of a mean.

    python benchmarks/live_speed.py --atlas atlas-demo --model vit_atlas_demo \\
        --checkpoint builder/demo/weights/vit_atlas_demo.safetensors
    python benchmarks/live_speed.py --vit-b [--work /tmp/live-speed]     # a random-init ViT-B/16 atlas, 30 units a layer

Servers: `plain` (Python's http.server: no headers, one thread) and `serve` (`vit-atlas serve`: cross-origin
isolated, up to four threads). Prints one JSON record per server. ``--profile`` adds, on the first server, where
one run's time goes: onnxruntime-web's own per-node profile (a second session in the tab, two runs of a zero image,
the second one counted), summed by operator, with the matrix products' rate in GFLOP/s.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def renderer_rss_mb(driver) -> float:
    """The largest resident set among the browser's renderer processes (the page's tab), in MB."""
    pid = driver.service.process.pid
    found = subprocess.run(["pgrep", "-f", "--", "--type=renderer"], capture_output=True, text=True).stdout.split()
    best = 0
    for p in found:
        try:
            status = Path(f"/proc/{p}/status").read_text()
            ppids = []
            q = p
            for _ in range(6):                      # only this driver's browser
                q = Path(f"/proc/{q}/status").read_text().split("PPid:")[1].split()[0]
                ppids.append(int(q))
            if pid in ppids:
                best = max(best, int(status.split("VmRSS:")[1].split()[0]))
        except (OSError, IndexError):
            continue
    return round(best / 1024, 1)


def reference(lm, path: Path) -> dict:
    """Per FFN layer, every unit's mean over the patch tokens (timm's modules, forward hooks)."""
    import torch
    from PIL import Image
    x = lm.eval_transform()(Image.open(path).convert("RGB"))[None]
    got = {}
    hooks = [b.mlp.act.register_forward_hook(lambda m, a, o, i=i: got.__setitem__(i, o)) for i, b in enumerate(lm.model.blocks)]
    with torch.no_grad():
        lm.model(x)
    for h in hooks:
        h.remove()
    return {i: v[0, lm.model.num_prefix_tokens:].mean(0).numpy() for i, v in got.items()}


# onnxruntime-web prints its profile through the console.log it bound when its module started: catch it from the
# page's first script on, while the run below asks for it
CATCH_CONSOLE = """
(function () {
  var log = console.log;
  console.log = function () {
    if (window.profileLines) { window.profileLines.push(Array.from(arguments).join(" ")); } else { log.apply(console, arguments); }
  };
})();
"""

PROFILE_SCRIPT = """
var done = arguments[arguments.length - 1];
var rec = AtlasLive.state.record, base = arguments[0];
var names = Object.keys(rec.files).filter(n => /^(model\\.onnx|weights-\\d{3}\\.bin)$/.test(n));
Promise.all(names.map(n => fetch(base + n).then(r => r.arrayBuffer()).then(b => [n, new Uint8Array(b)])))
  .then(async pairs => {
    var files = Object.fromEntries(pairs);
    var external = names.filter(n => n !== "model.onnx").map(n => ({path: n, data: files[n]}));
    var s = await ort.InferenceSession.create(files["model.onnx"], {executionProviders: ["wasm"],
      graphOptimizationLevel: "all", externalData: external, enableProfiling: true});
    var shape = rec.input.shape, x = new ort.Tensor("float32", new Float32Array(shape.reduce((a, b) => a * b)), shape);
    await s.run({[rec.input.name]: x});
    var t = performance.now();
    await s.run({[rec.input.name]: x});
    var run_ms = performance.now() - t;
    window.profileLines = [];
    await s.endProfiling();
    var text = window.profileLines.join("\\n");
    window.profileLines = null;
    await s.release();
    done({run_ms: run_ms, text: text});
  }).catch(e => { window.profileLines = null; done({error: String(e)}); });
"""

MATRIX_PRODUCTS = ("Gemm", "MatMul", "FusedMatMul")


def profile_ops(driver, base: str) -> dict:
    """Where one run's time goes, by operator, from onnxruntime-web's own profile of a second session in the tab
    (its second run); ``base``: the live model's folder relative to the page. The matrix
    products' FLOPs come from their shapes (2 M K N: A's elements times the output's columns)."""
    driver.set_script_timeout(300)
    got = driver.execute_async_script(PROFILE_SCRIPT, base)
    if "error" in got:
        raise RuntimeError(got["error"])
    events = [json.loads(line.strip().rstrip(",")) for line in got["text"].splitlines() if line.strip().startswith('{"cat"')]
    last = [e for e in events if e["name"] == "model_run"][-1]
    by_op, flops = {}, 0.0
    for event in events:
        if not (event["cat"] == "Node" and event["name"].endswith("_kernel_time")
                and last["ts"] <= event["ts"] <= last["ts"] + last["dur"]):
            continue
        op, ms = event["args"]["op_name"], event["dur"] / 1000
        by_op[op] = by_op.get(op, 0.0) + ms
        if op in MATRIX_PRODUCTS:
            a = next(iter(event["args"]["input_type_shape"][0].values()))
            out = next(iter(event["args"]["output_type_shape"][0].values()))
            flops += 2 * float(np.prod(a)) * out[-1]          # 2 (batch M K) N, whichever side A was transposed
    total = sum(by_op.values())
    matrix_ms = sum(by_op.get(op, 0.0) for op in MATRIX_PRODUCTS)
    return {"profiled_run_ms": round(got["run_ms"]), "kernels_ms": round(total),
            "matrix_products_ms": round(matrix_ms), "matrix_products_gflop": round(flops / 1e9, 2),
            "matrix_products_gflops_per_s": round(flops / matrix_ms / 1e6, 1),
            "by_op_ms": {op: round(ms, 1) for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])}}


def measure(url: str, images: list[Path], lm, loads: int = 3, profile: str | None = None) -> dict:
    from tests.helpers import choose_live_image, chromium, open_live
    driver = chromium(1280, 1000)
    if profile:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CATCH_CONSOLE})
    try:
        ready = []
        for _ in range(loads):
            open_live(driver, url)
            ready.append(driver.execute_script("return AtlasLive.state.timings.ready_ms"))
        threads = driver.execute_script("return ort.env.wasm.numThreads")
        kept, worst, runs = True, 0.0, []
        for path in images:
            page = choose_live_image(driver, path)
            runs.append(driver.execute_script("var t = AtlasLive.state.timings.run_ms; return t[t.length - 1]"))
            want = reference(lm, path)
            for layer in page["layers"]:
                if layer["site"] != "ffn":
                    continue
                units = np.asarray(layer["units"])
                got, exp = np.asarray(layer["means"]), want[layer["layer"]][units]
                worst = max(worst, float(np.abs(got - exp).max()))
                top = min(20, len(units))
                kept &= set(units[np.argsort(-got, kind="stable")[:top]]) == set(units[np.argsort(-exp, kind="stable")[:top]])
        memory = renderer_rss_mb(driver)
        ops = {"profile": profile_ops(driver, profile)} if profile else {}
        return {"ready_ms": round(statistics.median(ready)), "ready_ms_all": [round(r) for r in ready],
                "per_image_ms": round(statistics.median(runs[1:] or runs), 1), "per_image_ms_all": [round(r, 1) for r in runs],
                "threads": threads, "tab_rss_mb": memory, "ffn_top20_kept": bool(kept),
                "max_abs_diff_of_means": worst, **ops}
    finally:
        driver.quit()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--atlas", help="an atlas with a live model (rendered here if it has no live page)")
    p.add_argument("--model", help="its model's timm name (the reference)")
    p.add_argument("--checkpoint", help="its weights (default: --random-init)")
    p.add_argument("--vit-b", action="store_true", help="make a random-init ViT-B/16 atlas of 30 units a layer")
    p.add_argument("--images", type=int, default=6, help="test images per server (generated, seeded)")
    p.add_argument("--work", default="/tmp/live-speed")
    p.add_argument("--servers", default="plain,serve")
    p.add_argument("--profile", action="store_true", help="also break one run down by operator (first server)")
    a = p.parse_args()
    import build
    from PIL import Image
    from atlas.live import live_folder, read_live
    from atlas.serve import make_server
    from atlas.website import render
    from builder.models import ModelSource, load_model
    from tests.helpers import image_folder, plain_http
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.vit_b:
        a.model, a.atlas = "vit_base_patch16_224", str(work / "vitb")
        if not (Path(a.atlas) / "live").is_dir():
            images = image_folder(work / "vitb-images", ("a", "b"), 3, (150, 300))
            assert build.main(["probe", "--model", a.model, "--random-init", "--images", str(images), "--units", "0-29",
                               "--k", "2", "--workers", "0", "--out", a.atlas]) == 0
            start = time.time()
            assert build.main(["live", "--model", a.model, "--random-init", "--out", a.atlas]) == 0
            print(f"live model made in {time.time() - start:.1f} s", file=sys.stderr)
    root = Path(a.atlas)
    lm = load_model(ModelSource(a.model, checkpoint=a.checkpoint, random_init=not a.checkpoint))
    live = read_live(root, lm.source.name if (root / "live" / lm.source.name).is_dir() else a.model)
    render(root, progress=False, live="on")
    rng = np.random.default_rng(0)
    tests = []
    for i in range(a.images):
        w, h = int(rng.integers(120, 640)), int(rng.integers(120, 640))
        y, x = np.mgrid[0:h, 0:w]
        pixels = np.stack([x * 255 // w, y * 255 // h, rng.integers(0, 256, (h, w))], -1).astype(np.uint8)
        path = work / f"image-{i}.png"
        Image.fromarray(pixels).save(path)
        tests.append(path)
    common = {"model": live.model, "storage": live.record["storage"], "published_mb": round(live.published_bytes / 1e6, 1),
              "files": len(live.files), "date": time.strftime("%Y-%m-%d")}
    for n, server in enumerate(a.servers.split(",")):
        profile = live_folder(live.model) + "/" if a.profile and n == 0 else None
        if server == "plain":
            with plain_http(root) as base:
                record = measure(base + "site/live.html", tests, lm, profile=profile)
        else:
            import threading
            httpd = make_server(root, 0)
            threading.Thread(target=httpd.serve_forever, daemon=True).start()
            try:
                record = measure(f"http://127.0.0.1:{httpd.server_address[1]}/site/live.html", tests, lm, profile=profile)
            finally:
                httpd.shutdown()
                httpd.server_close()
        print(json.dumps({**common, "server": server, **record}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
