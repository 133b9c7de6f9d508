"""Helpers the tests share: real static servers on 127.0.0.1 (nginx, which honours ranges like GitHub
Pages and buckets do; Python's http.server, which answers them with the whole file like Cloudflare
Pages does) and a headless Chromium (each server stops when its block ends); what an export must
load as."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import build
from tests.conftest import TINY_VIT

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, proc=None, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _quoted(path: Path) -> str:
    """A path for a single-quoted nginx string (the test atlas's folder name has spaces and quotes)."""
    return str(path).replace("\\", "\\\\").replace("'", "\\'")


@contextlib.contextmanager
def nginx(root: Path, work: Path, extra: str = "", port: int | None = None):
    """nginx serving ``root`` on 127.0.0.1 (ranges honoured, unknown types as application/octet-stream,
    ``/site/404.html`` for missing files as GitHub Pages does; ``extra``: more server directives);
    yields its base URL."""
    if not Path(NGINX).exists():
        pytest.fail("these tests need nginx (apt-get install nginx; .ci/run installs it)")
    port = port or free_port()
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""      # pytest's folders are private to their user
    conf.write_text(f"""
{user}
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 64; }}
http {{
  types {{ text/html html; text/css css; application/javascript js; image/svg+xml svg; text/plain cff txt;
          application/json json; }}
  default_type application/octet-stream;
  access_log {work}/access.log;
  client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp; fastcgi_temp_path {work}/tmp;
  uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
  server {{
    listen 127.0.0.1:{port};
    root '{_quoted(root)}';
    error_page 404 /site/404.html;
    {extra}
  }}
}}
""")
    (work / "tmp").mkdir(exist_ok=True)
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(work)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        _wait_listening(port, proc)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def plain_http(root: Path):
    """Python's http.server on ``root``: it answers every range request with 200 and the whole file."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def chromium(width: int = 1280, height: int = 3000, extra: tuple[str, ...] = ()):
    """A headless Chromium driven by selenium (Debian's chromium and chromium-driver); ``extra``: more switches
    (``--enable-unsafe-webgpu`` gives it a WebGPU adapter, SwiftShader's, on a machine without a GPU)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.fail("browser tests need Debian's chromium and chromium-driver (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--disable-component-update", "--no-first-run",
                f"--window-size={width},{height}", *extra):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return True
        except Exception:  # noqa: BLE001 (the page may be between states)
            pass
        time.sleep(0.05)
    return predicate()


def load_every_config(root, out):
    """Every config the dataset card declares loads with Hugging Face `datasets` (a test dependency),
    with one row per unit of its model and site (or per dataset image), and a unit's image as stored."""
    import datasets
    import numpy as np
    import yaml
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    header = yaml.safe_load(card.split("---\n")[1])
    import atlas
    a = atlas.open(root)
    names = [c["config_name"] for c in header["configs"]]
    layered = [(m, s, layer) for m in a.models for s in a.sites(m) for layer in a.layers(m, s)]
    labels = sum(len(xs) for m, s, layer in layered for xs in a.layer_labels(m, s, layer).values())
    maps = [found for m, s, layer in layered if (found := a.layer_map(m, s, layer)) is not None]
    assert "dataset_index" in names and len(names) == 1 + sum(len(a.sites(m)) for m in a.models) + bool(labels) + bool(maps)
    for name in names:
        # a cache of its own: `datasets` keys its cache by the folder's path, which pytest's numbered temp
        # folders reuse from run to run, so the shared cache can hand back an older run's rows
        ds = datasets.load_dataset(str(out), name, split="train", cache_dir=str(Path(out).parent / "hf-cache"))
        if name == "dataset_index":
            assert len(ds) == len(a.dataset.paths)
            continue
        if name == "labels":                  # a row per label of every unit
            assert len(ds) == labels and set(ds["source"]) <= {"netdissect", "invert", "clip-dissect"}
            continue
        if name == "maps":                    # a row per unit on a map
            assert len(ds) == sum(len(found.units) for found in maps)
            continue
        model, site = ds[0]["model"], ds[0]["site"]
        assert name == f"{model}.{site}" and set(ds["model"]) == {model} and set(ds["site"]) == {site}
        assert len(ds) == sum(len(a.units(model, layer, site)) for layer in a.layers(model, site))
        first = ds[0]
        assert np.array_equal(np.asarray(first["image"]), a.unit_by_id(first["id"]).image)


# -- the command line, specs and folders -------------------------------------------------------

def run_cli(*argv: str) -> tuple[int, str, str]:
    """``python build.py ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = build.main(list(argv))
        except SystemExit as e:  # argparse
            code = e.code
    return code, out.getvalue(), err.getvalue()


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (lock files come and go, and are not work)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".locks" not in p.parts}


def error_lines(err: str) -> list[str]:
    """The lines of stderr that are not progress bars (tqdm's: a percentage bar or an elapsed time)."""
    return [line for line in err.replace("\r", "\n").splitlines()
            if line.strip() and "%|" not in line and not re.search(r"\[\d+:\d\d", line)]


def assert_refused(result, *needles: str, code: int = 2) -> None:
    rc, out, err = result
    assert rc == code, (rc, out, err)
    assert "Traceback" not in out + err, err
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])


ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def image_folder(root: Path, classes=("a", "b", "c"), per_class: int = 12, size: int | tuple[int, int] = 40,
                 seed: int = 0, name: str = "{i}.png", dim_by_class: bool = False) -> Path:
    """An ImageFolder of random RGB images: ``size`` pixels square, or a random height and width in
    [lo, hi) for a pair; ``dim_by_class`` divides class c's pixels by 1 + c (classes a probe can tell apart)."""
    rng = np.random.default_rng(seed)
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = rng.integers(size[0], size[1], 2) if isinstance(size, tuple) else (size, size)
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels // (1 + c) if dim_by_class else pixels).save(root / cls / name.format(i=i))
    return root


def write_spec(folder: Path, out: str = "atlas", steps: int = 2, extra: str = "") -> Path:
    images = folder / "images"
    if not images.exists():
        image_folder(images, ("a", "b"), 6, 32)
    args = ", ".join(f"{k} = {v}" for k, v in TINY_VIT.items())
    spec = folder / "spec.toml"
    spec.write_text(f"""
[atlas]
name = "test-atlas"
version = "2"
out = "{out}"

[build]
device = "cpu"
shard_units = 8

[recipe]
preset = "quick"
steps = {steps}

[dataset]
images = "images"
k = 3
workers = 0

[[models]]
name = "vit_tiny_patch16_224"
random_init = true
model_args = {{ {args} }}
layers = "0-2"
units = "0-23"
{extra}
""")
    return spec


def save_prisma_checkpoint(path, state: dict, config: dict, key: str = "cfg") -> None:
    """``torch.save`` of ``{"state_dict": state, key: VisionModelSAERunnerConfig(**config)}``, the config a
    dataclass of ViT-Prisma's own module name (as its newer checkpoints pickle it), made for the save only:
    the reader must not find the module (nothing in a checkpoint is imported)."""
    import dataclasses
    import sys
    import types
    import torch
    mod = types.ModuleType("vit_prisma.sae.config")
    cls = dataclasses.make_dataclass("VisionModelSAERunnerConfig", [(k, object, None) for k in config])
    cls.__module__, cls.__qualname__ = mod.__name__, "VisionModelSAERunnerConfig"
    mod.VisionModelSAERunnerConfig = cls
    names = ["vit_prisma", "vit_prisma.sae", "vit_prisma.sae.config"]
    for name in names:
        sys.modules[name] = mod if name == mod.__name__ else types.ModuleType(name)
    try:
        torch.save({"state_dict": state, key: cls(**config)}, path)
    finally:
        for name in names:
            del sys.modules[name]


def live_state(driver) -> str:
    """The live view's state: loading, ready, running, done, error or unavailable."""
    return driver.execute_script("return document.getElementById('live-view').getAttribute('data-state')")


def open_live(driver, url: str) -> None:
    """Open a live view and wait until its model is loaded."""
    driver.get(url)
    assert wait_for(lambda: live_state(driver) in ("ready", "error", "unavailable"), 60)
    assert live_state(driver) == "ready", driver.find_element("id", "live-status").text


def choose_live_image(driver, path) -> dict:
    """Choose ``path`` with the page's file input, as a reader does; what the page computed."""
    driver.find_element("id", "live-file").send_keys(str(path))
    assert wait_for(lambda: live_state(driver) in ("done", "error"), 60)
    assert live_state(driver) == "done", driver.find_element("id", "live-status").text
    return driver.execute_script("""
      var last = AtlasLive.state.last;
      return {input: Array.from(last.input.data), width: last.input.width, height: last.input.height,
              layers: last.layers.map(l => ({site: l.site, layer: l.layer, units: l.units, means: Array.from(l.means),
                                             maxes: Array.from(l.maxes)}))};""")
