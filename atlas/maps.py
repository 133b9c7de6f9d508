"""Layer maps: each layer's units placed in 2-D by what they respond to (docs/FORMAT.md "Layer maps"). Written by
`vit-atlas map` (builder.maps), one file per model and site: ``maps/<model>.<site>.h5`` with, for every
laid-out unit, its ``layer``, ``unit`` and position ``xy`` float32 [U, 2] in [0, 1]² (NaN: set aside, a dead
unit), and in its attributes the method, its parameters and seed, the input it read and each layer's
trustworthiness.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .format import MAPS, AtlasError, check_model_name
from .shard import attr_value, new_h5, read_attrs

MAP_FILE = MAPS + "/{model}.{site}.h5"


def map_file(model: str, site: str) -> str:
    """Atlas-relative path of the maps of (model, site)."""
    return MAP_FILE.format(model=check_model_name(model), site=site)


@dataclass
class LayerMap:
    """One layer's map: where each of its units sits (NaN for a unit set aside), how it was made, and how well
    neighbours on the map are neighbours in the data (trustworthiness, 0 to 1)."""
    units: np.ndarray           # int [n], ascending
    xy: np.ndarray              # float32 [n, 2] in [0, 1]², NaN rows set aside
    trustworthiness: float
    params: dict                # method, its parameters and seed, the input it read

    def position(self, unit: int) -> tuple[float, float] | None:
        """Where ``unit`` sits, or None when it is set aside or not on the map."""
        i = np.searchsorted(self.units, unit)
        if i >= len(self.units) or self.units[i] != unit or not np.isfinite(self.xy[i]).all():
            return None
        return float(self.xy[i, 0]), float(self.xy[i, 1])


def write_maps(root: Path, model: str, site: str, layers: np.ndarray, units: np.ndarray, xy: np.ndarray,
                  attrs: dict) -> Path:
    """Write (replace) the maps of (model, site) atomically; returns the file's path."""
    path = Path(root) / map_file(model, site)
    with new_h5(path) as f:
        f.attrs["model"], f.attrs["site"] = model, site
        for key, value in attrs.items():
            f.attrs[key] = attr_value(value)
        f.create_dataset("layer", data=np.asarray(layers, np.int32), track_times=False)
        f.create_dataset("unit", data=np.asarray(units, np.int32), track_times=False)
        f.create_dataset("xy", data=np.asarray(xy, np.float32), track_times=False)
    return path


def read_maps(path: Path) -> dict[int, LayerMap]:
    """A map file read whole and checked: each layer's LayerMap; AtlasError naming what is wrong otherwise."""
    try:
        with h5py.File(path, "r") as f:
            layer, unit, xy = f["layer"][()], f["unit"][()], f["xy"][()]
            attrs = read_attrs(f)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise AtlasError(f"{path} is not a map file ({str(e).splitlines()[0][:120]})") from None
    if layer.ndim != 1 or unit.shape != layer.shape or xy.shape != (len(layer), 2):
        raise AtlasError(f"{path}: its layers, units and positions do not agree in shape")
    finite = np.isfinite(xy).all(1)
    if ((xy[finite] < 0) | (xy[finite] > 1)).any():
        raise AtlasError(f"{path}: positions outside [0, 1]")
    trust = attrs.get("trustworthiness") or {}
    trust = json.loads(trust) if isinstance(trust, str) else trust
    params = {k: v for k, v in attrs.items() if k not in ("model", "site", "trustworthiness")}
    out = {}
    for value in np.unique(layer):
        rows = np.flatnonzero(layer == value)
        rows = rows[np.argsort(unit[rows], kind="stable")]
        out[int(value)] = LayerMap(unit[rows].astype(np.int64), xy[rows].astype(np.float32),
                                 float(trust.get(str(int(value)), float("nan"))), params)
    return out
