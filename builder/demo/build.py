"""The embedded default: `python build.py` builds a complete atlas offline, on a CPU, in minutes.

Stages (each also a command of its own): generate the shapes dataset (cached), visualize every
FFN unit of the demo ViT with the ``quick`` preset, probe it on the dataset, run the analyses,
render the site.
"""
from __future__ import annotations

import time
from pathlib import Path

from .models import VIT, weights_file
from .shapes import make_dataset

DEMO_IMAGES = 2000
DEMO_SEED = 1


def build_demo(out: str | Path = "atlas-demo", command: str = "python build.py", progress: bool = True) -> Path:
    """Build the demo atlas in ``out``; returns the path of the site's index.html."""
    from atlas.site import render
    from builder.models import ModelSource, load_model
    from builder.dataset import scan_images
    from builder.probe import ProbeJob, run_probe
    from builder.recipe import resolve_recipe
    from builder.schedule import VisualizeJob, run_visualize

    out = Path(out)
    timings = {}
    t = time.time()
    images = make_dataset(out / "images", DEMO_IMAGES, DEMO_SEED)
    timings["dataset"] = time.time() - t

    t = time.time()
    lm = load_model(ModelSource(VIT, checkpoint=str(weights_file(VIT))))
    run_visualize(lm, VisualizeJob(out=out, name=VIT, recipe=resolve_recipe("quick"), progress=progress), command)
    timings["visualize"] = time.time() - t

    t = time.time()
    run_probe(lm, scan_images(images), ProbeJob(out=out, name=VIT, progress=progress), command)
    timings["probe"] = time.time() - t

    t = time.time()
    index = render(out, progress=progress)
    timings["render"] = time.time() - t
    print("demo stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f"; total {sum(timings.values()):.0f} s")
    print(f"the demo atlas is in {out}/; open {index} in a browser (or `python build.py serve {out}`)")
    return index
