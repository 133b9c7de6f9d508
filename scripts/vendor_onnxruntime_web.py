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
import sys
import tarfile
import urllib.request
from importlib import metadata
from pathlib import Path

VERSION = "1.31.1"
INTEGRITY = "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw=="
TARBALL = f"https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-{VERSION}.tgz"
# the wasm build (CPU, SIMD, threads when the page is cross-origin isolated): the classic script, its loader and the
# binary, by their names in the package and as kept here: the loader as .js, since stock nginx serves .mjs as
# application/octet-stream and browsers refuse a module of that type (live.js names it through env.wasm.wasmPaths)
FILES = {"ort.wasm.min.js": "ort.wasm.min.js", "ort-wasm-simd-threaded.mjs": "ort-wasm-simd-threaded.js",
         "ort-wasm-simd-threaded.wasm": "ort-wasm-simd-threaded.wasm"}
OUT = Path(__file__).resolve().parent.parent / "site_templates" / "static" / "ort"


def main() -> None:
    data = urllib.request.urlopen(TARBALL, timeout=120).read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != INTEGRITY:
        sys.exit(f"{TARBALL}: integrity {digest} is not the pinned {INTEGRITY}")
    OUT.mkdir(parents=True, exist_ok=True)
    record = {"package": "onnxruntime-web", "version": VERSION, "tarball": TARBALL, "integrity": INTEGRITY,
              "license": "MIT", "files": {}}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for packaged, name in FILES.items():
            blob = tar.extractfile(f"package/dist/{packaged}").read()
            (OUT / name).write_bytes(blob)
            record["files"][name] = {"package_path": f"dist/{packaged}", "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
                                     "sri": "sha384-" + base64.b64encode(hashlib.sha384(blob).digest()).decode()}
    license_text = next(f for f in metadata.files("onnxruntime") if f.name in ("LICENSE", "LICENSE.txt")).read_text()
    (OUT / "LICENSE").write_text(license_text)
    (OUT / "VENDOR.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"onnxruntime-web {VERSION}: {', '.join(FILES.values())} in {OUT}")


if __name__ == "__main__":
    main()
