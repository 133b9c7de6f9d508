"""Fetch onnxruntime-web from the npm registry at the pinned version and keep the files the live view needs in
site_templates/static/ort/ (run once per version bump; the files are committed, so a build and the website work
offline).

    python scripts/vendor_onnxruntime_web.py

The tarball is checked against the registry's pinned integrity (sha512) before anything is extracted; the kept
files' sha256 go to VENDOR.json, which `render` checks before publishing them and the page hands to the browser
(the runtime's script tag carries its SRI hash). The license is the project's MIT license, from the onnxruntime
Python wheel's metadata (the npm package ships none).
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import sys
import tarfile
import urllib.request
from importlib import metadata
from pathlib import Path

VERSION = "1.31.1"
INTEGRITY = "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw=="
TARBALL = f"https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-{VERSION}.tgz"
# Two builds, by their names in the package and as kept here. The wasm build (CPU, SIMD, threads when the page is
# cross-origin isolated) for every visitor; the WebGPU build, loaded only where the browser has a WebGPU adapter.
# Loaders are kept as .js: stock nginx serves .mjs as application/octet-stream, which browsers refuse for a module
# (live.js names them through env.wasm.wasmPaths). The WebGPU binary (28.7 MB) is kept in pieces under
# PIECE_BYTES, the per-file limit of Cloudflare Pages (docs/HOSTING.md); live.js joins them.
BUILDS = {
    "wasm": {"script": ("ort.wasm.min.js", "ort.wasm.min.js"),
             "loader": ("ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.js"),
             "wasm": ("ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.wasm")},
    "webgpu": {"script": ("ort.webgpu.min.js", "ort.webgpu.min.js"),
               "loader": ("ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.js"),
               "wasm": ("ort-wasm-simd-threaded.asyncify.wasm", "ort-wasm-simd-threaded.asyncify.wasm")},
}
PIECE_BYTES = 24 * 2**20
OUT = Path(__file__).resolve().parent.parent / "site_templates" / "static" / "ort"


def sri(blob: bytes) -> str:
    """A Subresource Integrity value (sha384) for ``blob``."""
    return "sha384-" + base64.b64encode(hashlib.sha384(blob).digest()).decode()


def main() -> None:
    data = urllib.request.urlopen(TARBALL, timeout=120).read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != INTEGRITY:
        sys.exit(f"{TARBALL}: integrity {digest} is not the pinned {INTEGRITY}")
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    record = {"package": "onnxruntime-web", "version": VERSION, "tarball": TARBALL, "integrity": INTEGRITY,
              "license": "MIT", "files": {}}
    record["builds"] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for build, parts in BUILDS.items():
            entry = {}
            for role, (packaged, name) in parts.items():
                blob = tar.extractfile(f"package/dist/{packaged}").read()
                pieces = [blob[i:i + PIECE_BYTES] for i in range(0, len(blob), PIECE_BYTES)]
                names = [name] if len(pieces) == 1 else [f"{name}.{i}" for i in range(len(pieces))]
                for piece_name, piece in zip(names, pieces):
                    (OUT / piece_name).write_bytes(piece)
                    record["files"][piece_name] = {"package_path": f"dist/{packaged}", "bytes": len(piece),
                                                   "sha256": hashlib.sha256(piece).hexdigest(), "sri": sri(piece)}
                entry[role] = names if role == "wasm" else names[0]
                if role == "wasm":
                    entry["wasm_sha256"] = hashlib.sha256(blob).hexdigest()
            record["builds"][build] = entry
    license_text = next(f for f in metadata.files("onnxruntime") if f.name in ("LICENSE", "LICENSE.txt")).read_text()
    (OUT / "LICENSE").write_text(license_text)
    (OUT / "VENDOR.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"onnxruntime-web {VERSION}: {', '.join(record['files'])} in {OUT}")


if __name__ == "__main__":
    main()
