"""The paper's experiments as atlas analyses: `python build.py analyze NAME ...`.

Each analysis module has ``NAME``, ``applies(lm, job) -> None or why not``, ``run(lm, job, device)
-> results`` and ``describe(all models' results) -> views``. Results go to ``analyses/<name>.json``.
"""
from __future__ import annotations

from atlas.analyses import write_analysis
from atlas.format import AtlasError

from ..schedule import resolve_device
from . import foreground, frequency, sites, spatial, token_mixing
from .common import AnalysisJob

ANALYSES = {m.NAME: m for m in (token_mixing, foreground, frequency, spatial, sites)}


def run_analysis(name: str, lm, job: AnalysisJob) -> dict:
    """Run one analysis (or every applicable one for "all") and store the results in the atlas."""
    if name != "all" and name not in ANALYSES:
        raise AtlasError(f"unknown analysis {name!r}; analyses are {', '.join(ANALYSES)} or all")
    device = resolve_device(job.device)
    names = list(ANALYSES) if name == "all" else [name]
    done = {}
    for n in names:
        reason = ANALYSES[n].applies(lm, job) if name == "all" else None
        if reason:
            print(f"analysis {n}: skipped for {job.name} ({reason})")
            continue
        module = ANALYSES[n]
        results = module.run(lm, job, device)
        write_analysis(job.out, n, job.name, results, module.describe, job.command)
        done[n] = results
    return done
