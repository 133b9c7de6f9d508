"""The live view's files (issue 32): each model's live model as `vit-atlas live` wrote it (atlas.live, every file
checked against its record), onnxruntime-web's runtime (``site_templates/static/ort``, every file checked against
its VENDOR.json, pinned from the npm registry by scripts/vendor_onnxruntime_web.py) and a few of the dataset's
images to try, all published only when a live model is; and what the live page needs to find them."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np

from ..format import AtlasError
from ..images import ImageError, load_rgb
from ..live import LIVE_AUTO_BYTES, RECORD, live_folder, read_live
from .context import Renderer, human_bytes, templates_dir

RUNTIME = "assets/ort/"                  # website-relative folder of onnxruntime-web's files
SAMPLES = "live/samples/{i}.png"
MAX_SAMPLES = 6                          # dataset images offered to try: one per image class, the first ones


def load_runtime() -> tuple[dict, dict[str, bytes]]:
    """VENDOR.json of the shipped onnxruntime-web and the files to publish (every file it lists, checked against it,
    with LICENSE and VENDOR.json), each read once; AtlasError otherwise. Its ``builds`` name each build's classic
    script, the module it imports (the package's .mjs, kept as .js) and the pieces of its binary with the whole
    binary's sha256: ``wasm`` (CPU) and ``webgpu``."""
    folder = templates_dir() / "static" / "ort"
    try:
        vendor = (folder / "VENDOR.json").read_bytes()
        record = json.loads(vendor)
        files = {}
        for name, entry in record["files"].items():
            data = b"" if "/" in name else (folder / name).read_bytes()
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise ValueError(f"{name} is not the file VENDOR.json names")
            files[name] = data
        for build in ("wasm", "webgpu"):
            parts = record["builds"][build]
            if not {parts["script"], parts["loader"], *parts["wasm"]} <= set(files):
                raise ValueError(f"its {build} build names files it does not list")
        files.update({"LICENSE": (folder / "LICENSE").read_bytes(), "VENDOR.json": vendor})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AtlasError(f"the installed onnxruntime-web runtime is damaged ({e}): reinstall ViT Atlas, or render "
                         "with --live off") from None
    return record, files


def publish_live(r: Renderer, mode: str) -> tuple[list[dict], dict | None]:
    """Publish the live models ``mode`` asks for (auto: those at most LIVE_AUTO_BYTES; on: every model's, an error
    for a model without one; off: none) with the runtime; returns what the pages need of each model and of the
    runtime (``runtime_page``; None when no model is published). Every file is read once, checked as it is read."""
    if mode == "off":
        return [], None
    published = []
    for model in r.atlas.models:
        try:
            live = read_live(r.root, model, verify_files=False)
            if live is None:
                if mode == "on":
                    raise AtlasError(f"--live on: {model} has no live model in {r.root}: make it with `vit-atlas live "
                                     f"--model NAME [--checkpoint FILE | --random-init] --name {model} --out {r.root}`")
                continue
            if mode == "auto" and live.published_bytes > LIVE_AUTO_BYTES:
                print(f"note: the live model of {model} ({human_bytes(live.published_bytes)}) is larger than --live "
                      f"auto publishes ({human_bytes(LIVE_AUTO_BYTES)}): render with --live on to publish it")
                continue
            files = {name: live.read(name) for name in live.files}
        except AtlasError as e:
            if mode == "on":
                raise
            print(f"warning: not publishing the live model of {model}: {e}")
            continue
        folder = live_folder(model)
        for name, data in files.items():
            r.write(f"{folder}/{name}", data)
        r.write(f"{folder}/{RECORD}", (live.folder / RECORD).read_bytes())
        published.append({"model": model, "record": f"{folder}/{RECORD}", "bytes": live.published_bytes,
                          "storage": live.record.get("storage"), "check": live.record["check"]})
    if not published:
        return [], None
    runtime, files = load_runtime()
    for name, data in files.items():
        r.write(RUNTIME + name, data)
    return published, runtime_page(runtime)


def runtime_page(runtime: dict) -> dict:
    """What live.js needs of the runtime: its folder, version and each build's files, SRI hash and binary sha256."""
    builds = {name: {**parts, "sri": runtime["files"][parts["script"]]["sri"]}
              for name, parts in runtime["builds"].items()}
    return {"path": RUNTIME, "version": runtime["version"], "builds": builds}


def publish_samples(r: Renderer) -> list[str]:
    """A few dataset images, one per image class, re-encoded as PNG of exactly what the probe decoded (so the
    live view sees the probe's pixels); website-relative paths. None when the images are not at hand."""
    d = r.dataset
    if d is None or r.images_root is None or not r.images_root.is_dir():
        return []
    rows, seen = [], set()
    for row, label in enumerate(np.asarray(d.labels)[:10_000].tolist()):
        if label not in seen:
            seen.add(label)
            rows.append(row)
        if len(rows) == MAX_SAMPLES:
            break
    paths = []
    for row in rows:
        try:
            image = load_rgb(r.images_root / d.paths[row])
        except ImageError:
            continue
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        rel = SAMPLES.format(i=len(paths))
        r.write(rel, buffer.getvalue())
        paths.append(rel)
    return paths
