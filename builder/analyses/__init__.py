"""The paper's experiments as atlas analyses: `python build.py analyze NAME ...`.

Each analysis module has ``NAME``, ``applies(lm, job) -> None or why not``, ``run(lm, job, device)
-> results`` and ``describe(all models' results) -> views``, and optionally ``inputs(job) -> dict`` (what its
results depend on besides the model and the images). Results go to ``analyses/<name>.json``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from atlas.analyses import read_analysis, write_analysis
from atlas.dataset import paths_sha256
from atlas.folder import prepare_atlas_folder
from atlas.format import AtlasError
from atlas.manifest import sha256_file, write_manifest

from ..device import resolve_device
from . import concepts, foreground, frequency, sites, spatial, token_mixing
from .common import AnalysisJob

ANALYSES = {m.NAME: m for m in (token_mixing, foreground, frequency, spatial, sites, concepts)}


def inputs_of(lm, job: AnalysisJob) -> dict:
    """What an analysis's results depend on: the weights, the images and labels, the boxes file and
    the job's settings. A rerun with the same inputs gives the same results."""
    index = job.index
    images = paths_sha256(index.paths) if index else None
    labels = hashlib.sha256(index.labels.astype("<i8").tobytes()).hexdigest() if index else None
    boxes = sha256_file(job.boxes) if job.boxes and Path(job.boxes).is_file() else job.boxes
    return {"weights": lm.weights, "images": images, "labels": labels, "boxes": boxes, "limit": job.limit,
            "seed": job.seed, "layers": job.layers, "units": job.units, "threshold": job.threshold}


def run_analysis(name: str, lm, job: AnalysisJob, resume: bool = False) -> dict:
    """Run one analysis (or every applicable one for "all"), store the results in the atlas and list
    them (and the shards an analysis visualized) in its manifest. With ``resume``, an analysis whose
    stored results for this model came from the same inputs is kept."""
    if name != "all" and name not in ANALYSES:
        raise AtlasError(f"unknown analysis {name!r}; analyses are {', '.join(ANALYSES)} or all")
    device = resolve_device(job.device)
    prepare_atlas_folder(job.out)
    names = list(ANALYSES) if name == "all" else [name]
    inputs = inputs_of(lm, job)
    done = {}
    for n in names:
        reason = ANALYSES[n].applies(lm, job) if name == "all" else None
        if reason:
            print(f"analysis {n}: skipped for {job.name} ({reason})")
            continue
        module = ANALYSES[n]
        mine = {**inputs, **(module.inputs(job) if hasattr(module, "inputs") else {})}
        stored = read_analysis(job.out, n) if resume else None
        if stored and stored.get("inputs", {}).get(job.name) == mine and job.name in stored["results"]:
            print(f"analysis {n}: kept for {job.name} (stored results, same inputs)")
            done[n] = stored["results"][job.name]
            continue
        results = module.run(lm, job, device)
        write_analysis(job.out, n, job.name, results, module.describe, job.command, mine)
        done[n] = results
    write_manifest(job.out, job.command)
    return done
