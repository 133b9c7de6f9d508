"""Frequency reliance: accuracy under low-pass and high-pass filtering in the Fourier domain.

Each normalized input image is transformed with a 2-D FFT per channel; a low-pass filter keeps the
frequencies whose radius is at most ``cutoff`` (in units of the Nyquist frequency; 1 reaches the
middle of each edge, sqrt(2) the corners, so at sqrt(2) nothing is removed); a high-pass filter
removes the frequencies below ``cutoff`` but keeps the zero frequency (the mean colour), so the image
stays centred where the model expects it. The paper reports that ViTs lose less than CNNs when high
frequencies are removed.
"""
from __future__ import annotations

import math

import torch

from .common import AnalysisJob, check, correct_topk, eval_loader, labelled, missing_labels, percent

NAME = "frequency"
LOW_PASS = (math.sqrt(2), 0.75, 0.5, 0.35, 0.25, 0.15, 0.1)
HIGH_PASS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75)


def radius(height: int, width: int, device=None) -> torch.Tensor:
    """Each FFT bin's frequency radius in units of Nyquist: [H, W]."""
    fy = torch.fft.fftfreq(height, device=device) * 2
    fx = torch.fft.fftfreq(width, device=device) * 2
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def filtered(x: torch.Tensor, cutoff: float, kind: str) -> torch.Tensor:
    """Low-pass ("low": keep radius <= cutoff) or high-pass ("high": drop radius < cutoff, keep DC)
    filtering of images ``x`` [B, C, H, W]."""
    r = radius(*x.shape[-2:], device=x.device)
    keep = (r <= cutoff + 1e-9) if kind == "low" else ((r >= cutoff - 1e-9) | (r == 0))
    return torch.fft.ifft2(torch.fft.fft2(x) * keep).real.to(x.dtype)


def applies(lm, job: AnalysisJob) -> str | None:
    """None if the analysis applies to the job, else why not."""
    return missing_labels(job.index)


@torch.no_grad()
def run(lm, job: AnalysisJob, device: torch.device) -> dict:
    """Top-1 accuracy for each low-pass and high-pass cutoff."""
    check(NAME, job.name, applies(lm, job))
    index = labelled(lm, job.index, job.limit)
    model = lm.model.to(device)
    settings = [("low", c) for c in LOW_PASS] + [("high", c) for c in HIGH_PASS]
    hits = {s: 0 for s in settings}
    n = 0
    for ids, x, _ in eval_loader(lm, index, job):
        if x is None:
            continue
        x = x.to(device)
        labels = torch.from_numpy(index.labels[ids.numpy()]).to(device)
        for kind, cutoff in settings:
            hits[(kind, cutoff)] += correct_topk(model(filtered(x, cutoff, kind)), labels, ks=(1,))[1].sum().item()
        n += len(ids)
    return {"images": n,
            "low_pass": [[c, hits[("low", c)] / n] for c in LOW_PASS],
            "high_pass": [[c, hits[("high", c)] / n] for c in HIGH_PASS]}


def describe(results: dict) -> dict:
    """Title, text, tables and charts for every model's results."""
    low = {m: r["low_pass"] for m, r in results.items()}
    high = {m: r["high_pass"] for m, r in results.items()}
    rows = [[m, *(percent(a) for _, a in r["low_pass"]), *(percent(a) for _, a in r["high_pass"])]
            for m, r in results.items()]
    return {
        "title": "Frequency",
        "summary": "How much does each model depend on fine detail? Accuracy as the images are low-pass "
                   "filtered (high frequencies removed) or high-pass filtered (low frequencies removed) in the "
                   "Fourier domain. The paper reports that ViTs lose less than CNNs when high frequencies go.",
        "method": "2-D FFT of each normalized image per channel; low-pass keeps radii <= cutoff, high-pass "
                  "drops radii < cutoff but keeps the mean colour; radii in units of the Nyquist frequency "
                  "(sqrt 2 = nothing removed). Top-1 accuracy.",
        "tables": [{"caption": "Top-1 accuracy per cutoff",
                    "columns": ["model", *(f"low ≤{c:.2g}" for c in LOW_PASS), *(f"high ≥{c:.2g}" for c in HIGH_PASS)],
                    "rows": rows}],
        "charts": [{"type": "lines", "series": low, "title": "accuracy under low-pass filtering",
                    "x_label": "cutoff (fraction of Nyquist; smaller = blurrier)", "y_label": "top-1 accuracy",
                    "y_range": [0, 1], "caption": "Low-pass: high frequencies removed above the cutoff."},
                   {"type": "lines", "series": high, "title": "accuracy under high-pass filtering",
                    "x_label": "cutoff (fraction of Nyquist; larger = less low-frequency content)",
                    "y_label": "top-1 accuracy", "y_range": [0, 1],
                    "caption": "High-pass: frequencies below the cutoff removed (mean colour kept)."}],
    }
