"""Spatial information in individual units (paper appendix F, Figures 62-63).

For sampled units of each layer, take the unit's most activating dataset image (from the atlas's
probe). A patch is active when the unit's activation there exceeds the threshold (0.5 as in the paper;
``--threshold``). Black out every inactive patch, then additionally a fraction x of the active ones (chosen at
random from a recorded seed), and measure the number and the summed activation of active patches
relative to the original image. If each unit keeps spatial information, both fall linearly with x;
the paper sees this in every layer but the last.
"""
from __future__ import annotations

import numpy as np
import torch

import atlas
from atlas.format import AtlasError, command
from atlas.images import load_rgb

from ..recipe import unit_seed
from ..plan import parse_selection
from ..sites import find_layers, run_to
from .common import AnalysisJob, check

NAME = "spatial"
FRACTIONS = tuple(round(0.1 * i, 1) for i in range(11))
UNITS_PER_LAYER = 32


def blackout(x: torch.Tensor, patches: torch.Tensor, grid: tuple[int, int], black: torch.Tensor) -> torch.Tensor:
    """Copies of the normalized image ``x`` [C, H, W] with the patches where ``patches`` [n, h, w] is
    True set to ``black`` (the normalized value of a black pixel, [C, 1, 1])."""
    _, H, W = x.shape
    pixels = patches.repeat_interleave(H // grid[0], 1).repeat_interleave(W // grid[1], 2)   # [n, H, W]
    return torch.where(pixels[:, None], black, x[None])


def linear_fit(xs, ys) -> dict:
    """Least-squares line through (xs, ys) and its R^2."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    slope, intercept = np.polyfit(xs, ys, 1)
    residual = ys - (slope * xs + intercept)
    total = ((ys - ys.mean()) ** 2).sum()
    return {"slope": float(slope), "intercept": float(intercept),
            "r2": float(1 - (residual ** 2).sum() / total) if total > 0 else 1.0}


def probed_layers(job: AnalysisJob) -> list[int]:
    """The FFN layers of the job's model that the atlas holds probe results for."""
    try:
        info = atlas.open(job.out).models_info.get(job.name, {}).get("sites", {}).get("ffn", {})
    except AtlasError:
        return []
    return [int(ll) for ll, v in info.items() if "probe" in v.get("parts", [])]


def applies(lm, job: AnalysisJob) -> str | None:
    """None if the atlas holds a probe of the model, else why not."""
    if not probed_layers(job):
        return (f"it reads the most activating images from the atlas: run `{command('probe --model ...')} "
                f"--out {job.out}` first")
    return None


@torch.no_grad()
def run(lm, job: AnalysisJob, device: torch.device) -> dict:
    """Active-patch count and sum ratios against the fraction of active patches blacked out, per layer."""
    check(NAME, job.name, applies(lm, job))
    a = atlas.open(job.out)
    probed = probed_layers(job)
    root = job.index.root if job.index else a.dataset.root
    model = lm.model.to(device)
    layers = {layer.index: layer for layer in find_layers(model, "ffn", lm.input_size)}
    chosen = parse_selection(job.layers or "all", probed, "layers")
    mean, std = torch.tensor(lm.mean).view(3, 1, 1), torch.tensor(lm.std).view(3, 1, 1)
    black = ((0 - mean) / std).to(device)
    transform = lm.eval_transform()
    out = {}
    for index in chosen:
        layer = layers[index]
        available = list(a.units(job.name, index))
        rng = np.random.default_rng([job.seed, index])
        units = parse_selection(job.units, available, "units") if job.units else \
            sorted(rng.choice(available, min(UNITS_PER_LAYER, len(available)), replace=False).tolist())
        count_curves, sum_curves, used, skipped = [], [], {}, 0
        for u in units:
            unit = a.unit(job.name, index, u)
            if not unit.topk:
                skipped += 1
                continue
            x = transform(load_rgb(root / a.dataset.paths[unit.topk[0].index])).to(device)
            (grid,) = run_to(model, x[None], [layer])
            before = grid[0, :, :, u]
            active = before > job.threshold
            n_active = int(active.sum())
            if n_active == 0:
                skipped += 1
                continue
            g = torch.Generator().manual_seed(unit_seed(job.name, "ffn", index, u, job.seed))
            order = torch.randperm(n_active, generator=g)
            positions = active.flatten().nonzero()[:, 0]
            masks = []
            for fraction in FRACTIONS:
                drop = torch.zeros(active.numel(), dtype=torch.bool, device=device)
                drop[positions[order[:round(fraction * n_active)].to(device)]] = True
                masks.append(~active | drop.view(active.shape))
            (after,) = run_to(model, blackout(x, torch.stack(masks), layer.grid, black), [layer])
            after = after[..., u]
            hot = after > job.threshold
            used[int(u)] = n_active
            count_curves.append((hot.flatten(1).sum(1).float() / n_active).cpu().numpy())
            sum_curves.append(((after * hot).flatten(1).sum(1) / before[active].sum()).cpu().numpy())
        if not count_curves:
            out[str(index)] = {"units": 0, "skipped": skipped}
            continue
        count, total = np.mean(count_curves, 0), np.mean(sum_curves, 0)
        out[str(index)] = {"units": len(count_curves), "skipped": skipped, "active_patches": used,
                           "count": count.tolist(),
                           "sum": total.tolist(), "fit_count": linear_fit(FRACTIONS, count),
                           "fit_sum": linear_fit(FRACTIONS, total)}
    return {"threshold": job.threshold, "fractions": list(FRACTIONS), "seed": job.seed, "layers": out}


def describe(results: dict) -> dict:
    """Title, text, tables and charts for every model's results."""
    charts, rows = [], []
    for model, r in results.items():
        layers = {k: v for k, v in r["layers"].items() if v["units"]}
        for what, label in (("count", "number"), ("sum", "sum")) if layers else ():
            charts.append({"type": "lines", "y_range": [0, max(1.0, max(max(v[what]) for v in layers.values()))],
                           "title": f"{model}: {label} of active patches after / before",
                           "x_label": "fraction of active patches blacked out", "y_label": f"{label} after / before",
                           "series": {f"layer {k}": [[f, y] for f, y in zip(r["fractions"], v[what])]
                                      for k, v in layers.items()},
                           "caption": f"{model}: mean over units of the {label} of active patches (activation > "
                                      f"{r['threshold']}) after blacking out a fraction of them, relative to the "
                                      "original image (Figures 62-63)."})
        for k, v in r["layers"].items():
            rows.append([model, k, v["units"], v["skipped"],
                         f"{v['fit_count']['r2']:.3f}" if v["units"] else "–",
                         f"{v['fit_count']['slope']:.2f}" if v["units"] else "–",
                         f"{v['fit_sum']['r2']:.3f}" if v["units"] else "–"])
    return {
        "title": "Spatial information in units",
        "summary": "Do individual units keep track of where things are? Blacking out a growing share of a unit's "
                   "active patches should reduce its activation proportionally if the unit responds to those "
                   "patches locally. The paper finds linear curves for every layer but the last, where tokens mix.",
        "method": "For sampled units, the most activating dataset image from the atlas's probe; patches with "
                  "activation above the threshold are active; inactive patches and then a random fraction of the active ones "
                  "(seeded per unit) are set to black; ratios are averaged over units. Units whose best image has "
                  "no active patch are skipped. R² of a straight-line fit measures linearity.",
        "tables": [{"caption": "Linearity per layer", "columns": ["model", "layer", "units", "skipped",
                                                                 "R² (count)", "slope (count)", "R² (sum)"],
                    "rows": rows}],
        "charts": charts,
    }
