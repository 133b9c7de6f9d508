"""`vit-atlas map`: a map of every layer of a site, each unit placed by what it responds to (issue 33).

A unit's profile is its per-image scores from the probe's score file, standardized, or (a sketched probe) its
sketch, the same profile randomly projected: the cosine of two profiles is the correlation of the two units'
scores (estimated, for sketches). UMAP (umap-learn) places each layer's firing units on cosine distances, from
a recorded seed (with a seed, UMAP runs single-threaded and gives the same map again); units that never
fire (exact scores) or fire the same on every image are set aside (NaN). Positions are scaled into [0, 1]². Each layer's
trustworthiness (scikit-learn's, its ``TRUST_NEIGHBOURS`` neighbours, against 1 − correlation) is measured
and stored: how often a unit's neighbours on the map are its neighbours in the data.
"""
from __future__ import annotations

import hashlib
import threading
import time
import warnings
from pathlib import Path

import h5py
import numpy as np

from atlas.folder import prepare_atlas_folder
from atlas.format import AtlasError, score_file
from atlas.log import append_log
from atlas.maps import write_maps
from atlas.manifest import write_manifest

from .defaults import SEED

N_NEIGHBOURS = 15           # UMAP's neighbourhood (its default): local structure against global
MIN_DIST = 0.1              # UMAP's spacing of close points (its default)
TRUST_NEIGHBOURS = 10       # neighbours trustworthiness compares (the measure)
EXACT_NEIGHBOURS_BELOW = 4096   # umap-learn's own bound: fewer points, exact neighbours from all distances


def _umap():
    """umap-learn, with its numba functions cached on disk where numba can write (umap-learn does not ask for
    it: without the cache every process compiles them again, ~5 s on 2 cores, the larger part of the demo's maps)."""
    import numba
    import umap
    import umap.distances
    import umap.layouts
    import umap.umap_
    import umap.utils
    for module in (umap.umap_, umap.layouts, umap.utils, umap.distances):
        for function in vars(module).values():
            if isinstance(function, numba.core.dispatcher.Dispatcher) and \
                    isinstance(function._cache, numba.core.caching.NullCache):
                try:
                    function.enable_caching()
                except RuntimeError:          # no writable cache folder: compiled each time, as umap-learn does
                    pass
    return umap


def exact_neighbours(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each unit-length row's ``k`` nearest rows by cosine distance (itself first), and those distances, from all
    pairwise distances (what umap-learn computes for fewer than 4096 points, without its compiled search)."""
    distance = np.clip(1 - vectors @ vectors.T, 0, 2).astype(np.float32)
    np.fill_diagonal(distance, -1)                       # itself first, whatever its duplicates
    index = np.argsort(distance, axis=1, kind="stable")[:, :k]
    nearest = np.take_along_axis(distance, index, 1)
    nearest[:, 0] = 0
    return index.astype(np.int64), nearest


def unit_profiles(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """From a score file: each unit's (layer, unit) and its profile, rows of unit length whose dot products are
    the correlations of the units' scores (exactly, or estimated from a sketch); which input it was."""
    try:
        with h5py.File(path, "r") as f:
            layer, unit = f["layer"][()].astype(np.int64), f["unit"][()].astype(np.int64)
            if f.attrs.get("mode") == "exact":
                z = f["scores"][()].astype(np.float64)
                z = np.where((z > 0).any(0), z - z.mean(0), 0)          # a unit that never fires: no profile
                vectors, what = z.T, "exact scores"
            else:
                vectors, what = f["sketch"][()].astype(np.float64), f"sketch d={int(f.attrs['d'])}"
    except (OSError, KeyError, ValueError) as e:
        raise AtlasError(f"{path} is not a score file ({str(e).splitlines()[0][:120]})") from None
    norm = np.linalg.norm(vectors, axis=1, keepdims=True)
    return layer, unit, vectors / np.maximum(norm, 1e-12), what


def compile_in_background() -> threading.Thread:
    """Import umap-learn and compile what a map needs on a thread, while the caller does other work (numba's
    LLVM work and torch's kernels both run outside the GIL); a map made later waits for nothing it finds
    compiled. The thread's result is thrown away: it only fills numba's caches."""
    def warm():
        rng = np.random.default_rng(0)
        points = rng.standard_normal((2 * N_NEIGHBOURS + 2, 8))
        map_points(points / np.linalg.norm(points, axis=1, keepdims=True), 0)
    thread = threading.Thread(target=warm, name="umap-compile", daemon=True)
    thread.start()
    return thread


def map_points(vectors: np.ndarray, seed: int, n_neighbours: int = N_NEIGHBOURS,
                  min_dist: float = MIN_DIST) -> np.ndarray:
    """2-D positions in [0, 1]² of unit-length ``vectors`` [n, d] by UMAP on cosine distances (fewer than four
    points: on a line). The same vectors and seed give the same positions."""
    n = len(vectors)
    if n < 4:
        return np.stack([np.linspace(0.25, 0.75, n) if n > 1 else np.full(n, 0.5), np.full(n, 0.5)], 1)
    umap = _umap()
    k = min(n_neighbours, n - 1)
    # exact neighbours computed here for small layers: the same neighbours umap-learn finds, without compiling its
    # search (half of the first map's time); no search index is kept since nothing new is ever placed on a map
    known = exact_neighbours(vectors, k) if n < EXACT_NEIGHBOURS_BELOW else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # "n_jobs overridden by setting random_state": that is the point
        xy = umap.UMAP(n_neighbors=k, min_dist=min_dist, metric="cosine", random_state=seed, n_components=2,
                       init="spectral" if n > n_neighbours else "random", precomputed_knn=known or (None, None, None)
                       ).fit_transform(vectors.astype(np.float32))
    lo, hi = xy.min(0), xy.max(0)
    span = float(max((hi - lo).max(), 1e-12))
    return (xy - lo) / span * 0.9 + 0.05 + (span - (hi - lo)) / span * 0.45      # centred, aspect kept


def trustworthiness(vectors: np.ndarray, xy: np.ndarray, k: int = TRUST_NEIGHBOURS) -> float:
    """scikit-learn's trustworthiness of ``xy`` against the correlation distances of ``vectors``."""
    from sklearn.manifold import trustworthiness as measure
    if len(vectors) <= 2 * k + 1:
        return float("nan")              # undefined for so few points (the measure needs n > 2k)
    distance = np.clip(1 - vectors @ vectors.T, 0, 2)
    np.fill_diagonal(distance, 0)
    return float(measure(distance, xy, n_neighbors=k, metric="precomputed"))


def run_maps(out: Path, name: str, site: str = "ffn", seed: int = SEED, command: str = "",
                progress: bool = True) -> dict[int, float]:
    """Lay out every probed layer of (name, site) in the atlas ``out``; returns each layer's trustworthiness."""
    from tqdm import tqdm
    start = time.perf_counter()
    out = prepare_atlas_folder(out)
    path = out / score_file(name, site)
    if not path.is_file():
        raise AtlasError(f"{out} holds no probe scores of {name}/{site}: run the probe first (the map is made from "
                         "every unit's scores on the dataset)")
    layer, unit, vectors, what = unit_profiles(path)
    xy = np.full((len(unit), 2), np.nan, np.float32)
    trust = {}
    layers = sorted(set(layer.tolist()))
    for value in tqdm(layers, desc=f"map {name}/{site}", unit="layer", disable=not progress, dynamic_ncols=True):
        rows = np.flatnonzero(layer == value)
        firing = rows[np.abs(vectors[rows]).sum(1) > 0]                 # a constant unit has no profile
        points = map_points(vectors[firing], seed)
        xy[firing] = points
        trust[str(value)] = trustworthiness(vectors[firing], points)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    umap = _umap()
    write_maps(out, name, site, layer, unit, xy, {
        "method": "umap", "umap_version": umap.__version__, "metric": "cosine", "n_neighbors": N_NEIGHBOURS,
        "min_dist": MIN_DIST, "seed": seed,
        "neighbours": f"exact (all distances) for layers under {EXACT_NEIGHBOURS_BELOW} units, else umap-learn's search", "input": what, "score_file_sha256": digest,
        "trustworthiness_neighbours": TRUST_NEIGHBOURS, "trustworthiness": trust})
    write_manifest(out, command)
    append_log(out, {"stage": "map", "model": name, "site": site, "units": len(unit),
                     "seconds": round(time.perf_counter() - start, 3)})
    return {int(k): v for k, v in trust.items()}
