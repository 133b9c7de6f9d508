"""Related units: which units fire on the same images, from the probe's own pass (no second read).

During the probe every image's score for every probed unit goes into a ``ScoreStore``:

- ``exact``: the whole [images × units] matrix, float16, in a memory-mapped file while the pass runs;
- ``sketch`` (when the matrix would be too large): per unit the random projection Σ_i s_ui r_i, its
  sum and sum of squares, where r_i ∈ {−1, +1}^d is a hash of the image's candidate index (stream
  IMAGE_SIGNS of ``counter_rng``, image index as the seed). Every model probed on the same images
  uses the same r_i, so sketches of different models can be compared. For standardized scores
  z_u = (s_u − μ_u) / σ_u the sketch is (Σ_i s_ui r_i − μ_u Σ_i r_i) / σ_u, and the cosine of two
  sketches estimates the correlation of the two units (error about 1 / √d).

After the pass the store is written as ``scores/<model>-<site>.h5``; ``rebuild_related`` then rebuilds
``related.h5`` from every score file of the atlas's dataset: for each unit the ``k`` most correlated
units in its own layer, elsewhere in its model, and in other models (docs/FORMAT.md "related.h5").
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

from atlas.dataset import Dataset
from atlas.format import DATASET, FORMAT_VERSION, RELATED, SCORES
from atlas.locks import Lock, lock_path
from atlas.shard import attr_value, new_h5

from .counter_rng import uniform

SCOPES = ("same layer", "same model", "other models")
IMAGE_SIGNS = 8                     # counter_rng stream of the sketch's per-image signs
EXACT_BUDGET = 512 * 2**20          # bytes of float16 scores kept exactly ("auto")
MODES = ("auto", "exact", "sketch", "off")


def image_signs(candidates: torch.Tensor, d: int) -> torch.Tensor:
    """The sketch's r_i for images with these candidate indices: float32 ±1 [B, d]."""
    return torch.where(uniform(candidates, 0, IMAGE_SIGNS, (d,)) < 0.5, -1.0, 1.0)


class ScoreStore:
    """Every probed unit's score on every image, exactly or as a sketch (see the module docstring)."""

    def __init__(self, widths: list[int], candidates: int, mode: str, d: int, memmap: Path, device):
        total = sum(widths)
        if mode == "auto":
            mode = "exact" if candidates * total * 2 <= EXACT_BUDGET else "sketch"
        self.mode, self.d, self.widths, self.device = mode, d, widths, device
        self.offsets = np.concatenate([[0], np.cumsum(widths)]).astype(int)
        self.memmap = memmap
        if mode == "exact":
            memmap.parent.mkdir(exist_ok=True)
            shape = (candidates, total)
            self.scores = np.lib.format.open_memmap(memmap, mode="r+") if memmap.exists() else None
            if self.scores is None or self.scores.shape != shape:      # no earlier pass, or another one's
                self.scores = np.lib.format.open_memmap(memmap, mode="w+", dtype=np.float16, shape=shape)
        elif mode == "sketch":
            self.proj = torch.zeros(total, d, dtype=torch.float64, device=device)
            self.sum = torch.zeros(total, dtype=torch.float64, device=device)
            self.sq = torch.zeros(total, dtype=torch.float64, device=device)
            self.signs = torch.zeros(d, dtype=torch.float64, device=device)
            self.count = 0

    def update(self, layer: int, scores: torch.Tensor, candidates: torch.Tensor) -> None:
        """Fold in one layer's scores [units, B] for images with candidate indices [B]."""
        lo, hi = self.offsets[layer], self.offsets[layer + 1]
        if self.mode == "exact":
            self.scores[candidates.cpu().numpy(), lo:hi] = scores.T.cpu().numpy().astype(np.float16)
        elif self.mode == "sketch":
            s = scores.float()
            r = image_signs(candidates, self.d).to(s.device)
            self.proj[lo:hi] += (s @ r).double()               # one batch in float32, the running sums in float64
            self.sum[lo:hi] += s.sum(1, dtype=torch.float64)
            self.sq[lo:hi] += (s * s).sum(1, dtype=torch.float64)
            if layer == 0:
                self.signs += r.sum(0)
                self.count += len(candidates)

    def state(self) -> dict:
        """What a checkpoint keeps (the exact matrix is on disk already)."""
        if self.mode != "sketch":
            return {"mode": self.mode}
        return {"mode": "sketch", "proj": self.proj.cpu(), "sum": self.sum.cpu(), "sq": self.sq.cpu(),
                "signs": self.signs.cpu(), "count": self.count}

    def load(self, state: dict) -> None:
        """Continue from a checkpoint's ``state``."""
        if state.get("mode") == "sketch" and self.mode == "sketch":
            for name in ("proj", "sum", "sq", "signs"):
                setattr(self, name, state[name].to(self.device))
            self.count = state["count"]

    def write(self, path: Path, table: list[tuple[int, int]], good: list[int], attrs: dict) -> None:
        """Write the score file: the unit table (layer, unit), and the scores of the images that
        decoded (dataset rows, in order) or the sketch."""
        if self.mode == "off":
            return
        with new_h5(path) as f:
            f.attrs.update({"format_version": FORMAT_VERSION, "mode": self.mode, "images": len(good),
                            **{k: attr_value(v) for k, v in attrs.items()}})
            f.create_dataset("layer", data=np.array([t[0] for t in table], np.int16))
            f.create_dataset("unit", data=np.array([t[1] for t in table], np.int32))
            if self.mode == "exact":
                f.create_dataset("candidate", data=np.asarray(good, np.int64))
                f.create_dataset("scores", data=self.scores[np.asarray(good, np.int64)],
                                 chunks=(min(len(good), 1024), min(len(table), 256)), compression="gzip",
                                 compression_opts=1, shuffle=True)
            else:
                f.attrs["d"] = self.d
                mean = self.sum / max(self.count, 1)
                std = (self.sq / max(self.count, 1) - mean ** 2).clamp(min=0).sqrt()
                sketch = (self.proj - mean[:, None] * self.signs[None]) / std.clamp(min=1e-12)[:, None]
                f.create_dataset("sketch", data=_unit_rows(sketch).float().cpu().numpy())
                f.create_dataset("mean", data=mean.float().cpu().numpy())
                f.create_dataset("std", data=std.float().cpu().numpy())
        self.discard()

    def discard(self) -> None:
        """Remove the pass's working file (once the score file holds what it held)."""
        if self.mode == "exact":
            self.scores = None
            self.memmap.unlink(missing_ok=True)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def _standardized(scores: np.ndarray) -> torch.Tensor:
    """Columns of a [N, U] score matrix as z-scores / √N (so that Zᵀ Z is the correlation matrix)."""
    z = torch.from_numpy(scores.astype(np.float32))
    z = z - z.mean(0)
    return z / (z.norm(dim=0).clamp(min=1e-12))


def top_related(vectors: torch.Tensor, keys: torch.Tensor, k: int, columns: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """For each of R units, the k most similar units per scope: (rows [R, 3, k] int32, -1 empty; their
    similarity [R, 3, k]). ``vectors``: unit rows [R, d] whose dot products are the similarities, or with
    ``columns`` the unit columns [N, R] (z-scores / √N: the dot products are correlations). ``keys`` [R, 4]:
    model, site, layer, unit (scopes: same model, site and layer; same model otherwise; other models)."""
    R = keys.shape[0]
    rows_out = np.full((R, len(SCOPES), k), -1, np.int32)
    corr_out = np.full((R, len(SCOPES), k), np.nan, np.float32)
    for start in range(0, R, 1024):
        rows = torch.arange(start, min(R, start + 1024))
        c = (vectors[:, rows].T @ vectors if columns else vectors[rows] @ vectors.T).float()   # (b, R)
        c[torch.arange(len(rows)), rows] = -torch.inf       # not itself
        c = torch.nan_to_num(c, nan=-torch.inf)
        same_model = keys[rows, 0][:, None] == keys[:, 0][None]
        same_layer = same_model & (keys[rows, 1][:, None] == keys[:, 1][None]) & (keys[rows, 2][:, None] == keys[:, 2][None])
        for scope, mask in enumerate((same_layer, same_model & ~same_layer, ~same_model)):
            top = torch.where(mask, c, torch.tensor(-torch.inf)).topk(min(k, R), dim=1)
            ok = torch.isfinite(top.values)
            n = top.values.shape[1]
            rows_out[start:start + len(rows), scope, :n] = torch.where(ok, top.indices, -1).numpy()
            corr_out[start:start + len(rows), scope, :n] = torch.where(ok, top.values, torch.nan).numpy()
    return rows_out, corr_out


def score_file_of(path: Path, fingerprint: str) -> bool:
    """Whether the score file at ``path`` is complete and was written by the probe pass ``fingerprint``."""
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("probe_fingerprint") == fingerprint
    except OSError:
        return False


def _score_files(out: Path) -> tuple[str | None, list[Path]]:
    """The atlas's dataset hash and its score files of that dataset, sorted."""
    if not (out / DATASET).exists():
        return None, []
    dataset_hash = Dataset(out / DATASET).attrs.get("paths_sha256")
    files = []
    for path in sorted((out / SCORES).glob("*.h5")) if (out / SCORES).is_dir() else []:
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("dataset_paths_sha256") == dataset_hash:
                    files.append(path)
        except OSError:
            continue
    return dataset_hash, files


def related_sources(out: Path) -> list[list[str]]:
    """[score file path, sha256] of every score file related.h5 should be built from (its ``sources``)."""
    from atlas.manifest import sha256_file
    return [[path.relative_to(out).as_posix(), sha256_file(path)] for path in _score_files(out)[1]]


def complete_related(out: Path, k: int = 8) -> Path | None:
    """Rebuild ``related.h5`` unless it was built from exactly the atlas's current score files (its
    ``sources``): what a probe killed between its score file and related.h5 left undone."""
    out = Path(out)
    try:
        with h5py.File(out / RELATED, "r") as f:
            current = json.loads(f.attrs.get("sources", "null")) == related_sources(out) and f.attrs.get("k") == k
    except (OSError, ValueError):
        current = False
    return (out / RELATED) if current else rebuild_related(out, k)


def rebuild_related(out: str | Path, k: int = 8, force_sketch: int | None = None) -> Path | None:
    """Rebuild ``related.h5`` from every score file of the atlas's dataset; None when there is none.

    Exact when every score file is exact (correlations of the stored scores), else through sketches
    (exact files are sketched with the same image signs); ``force_sketch=d`` sketches everything at d
    dimensions (used to measure the sketch's recall against the exact result)."""
    out = Path(out)
    dataset_hash, files = _score_files(out)
    if not files:
        return None
    table, blocks, modes, ds = [], [], [], set()
    models, sites = [], []
    for path in files:
        with h5py.File(path, "r") as f:
            model, site = str(f.attrs["model"]), str(f.attrs["site"])
            models += [model] if model not in models else []
            sites += [site] if site not in sites else []
            m, s = models.index(model), sites.index(site)
            table += [(m, s, int(layer), int(unit)) for layer, unit in zip(f["layer"][()], f["unit"][()])]
            modes.append(str(f.attrs["mode"]))
            if f.attrs["mode"] == "sketch":
                ds.add(int(f.attrs["d"]))
            blocks.append(path)
    exact = force_sketch is None and all(mode == "exact" for mode in modes)
    d = force_sketch or (max(ds) if ds else 1024)
    if len(ds) > 1:
        raise ValueError(f"score files of {out} have sketches of different sizes {sorted(ds)}")
    vectors = []
    for path in blocks:
        with h5py.File(path, "r") as f:
            if f.attrs["mode"] == "exact":
                z = _standardized(f["scores"][()])
                vectors.append(z if exact else
                               _unit_rows(z.T.double() @ image_signs(torch.from_numpy(f["candidate"][()]), d).double()))
            else:
                vectors.append(torch.from_numpy(f["sketch"][()]).double())
    keys = torch.tensor(table, dtype=torch.int64)           # (R, 4): model, site, layer, unit
    if exact:
        rows_out, corr_out = top_related(torch.cat(vectors, dim=1), keys, k, columns=True)
    else:
        rows_out, corr_out = top_related(torch.cat(vectors, dim=0).float(), keys, k)
    target = out / RELATED
    with Lock(lock_path(out, f"writes/{RELATED}")).wait(600, f"writing {RELATED}"):
        with new_h5(target) as f:
            f.attrs.update({"format_version": FORMAT_VERSION, "k": k, "scopes": json.dumps(list(SCOPES)),
                            "models": json.dumps(models), "sites": json.dumps(sites),
                            "method": "exact" if exact else f"sketch d={d}",
                            "dataset_paths_sha256": dataset_hash,
                            "sources": json.dumps(related_sources(out))})
            for i, name in enumerate(("model", "site", "layer", "unit")):
                f.create_dataset(name, data=keys[:, i].numpy().astype(np.int32))
            f.create_dataset("related/row", data=rows_out, compression="gzip", compression_opts=1)
            f.create_dataset("related/corr", data=corr_out, compression="gzip", compression_opts=1)
    return target
