"""The embedded default: `python build.py` builds a complete atlas offline, on a CPU, in minutes.

It is the packaged ``demo.toml`` run as a build spec — visualize every FFN unit of the demo ViT with the
``quick`` preset, probe it on the generated shapes, label its units, run the analyses for the ViT and the
CNN, write the manifest and render the website — after generating the dataset and its concept dataset
(cached) into the atlas folder.
"""
from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from atlas.folder import check_owned_folder, prepare_atlas_folder
from atlas.format import WEBSITE, command as command_line

from .shapes import make_dataset
from ..defaults import DEMO_CONCEPT_IMAGES, DEMO_IMAGES, DEMO_SEED

DEMO_SPEC = Path(str(resources.files("builder.demo") / "demo.toml"))   # inside the package: installed or not


def build_demo(out: str | Path = "atlas-demo", command: str = "python build.py", progress: bool = True) -> Path:
    """Build the demo atlas in ``out``; returns the path of the website's index.html."""
    from builder.shares import Share
    from builder.pipeline import run_spec
    from builder.spec import load_spec

    t0 = time.time()
    spec = load_spec(DEMO_SPEC)
    spec.out = Path(out).resolve()
    spec.images, spec.boxes = spec.out / "images", spec.out / "images" / "boxes.csv"
    spec.label_sources.broden, spec.label_sources.attributes = spec.out / "concepts", spec.images / "attributes.csv"
    prepare_atlas_folder(spec.out)
    for folder in (spec.images, spec.label_sources.broden):   # the demo's own folders inside the atlas: never
        check_owned_folder(folder)                               # written through a link
    make_dataset(spec.images, DEMO_IMAGES, DEMO_SEED, concepts=spec.label_sources.broden,
                 concept_images=DEMO_CONCEPT_IMAGES)
    run_spec(spec, Share(), command, progress)
    index = spec.out / WEBSITE / "index.html"
    print(f"demo atlas built in {time.time() - t0:.0f} s: {spec.out}/")
    print(f"open {index} in a browser (or run `{command_line(f'serve {out}')}`)")
    return index
