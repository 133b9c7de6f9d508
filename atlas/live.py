"""The live model: an atlas's model in ONNX for the website's "Try an image" view (docs/FORMAT.md "Live model").

Written by `vit-atlas live` (builder.live) into ``live/<model>/``: ``model.onnx`` (the graph, its weights kept
outside it), ``weights-NNN.bin`` (the weights, in files of at most ``LIVE_FILE_BYTES``: under the per-file limit
of every host docs/HOSTING.md names) and ``live.json``, the record: how an image is prepared (timm's eval
transform, step by step), the input, the outputs (one per site and layer: the patch grid of the atlas's units),
the weights' storage, the check against PyTorch with its figures, and every file's size and sha256.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .format import LIVE, AtlasError, check_model_name
from .manifest import write_json
from .shard import write_atomically

GRAPH = "model.onnx"
RECORD = "live.json"
WEIGHTS = "weights-{:03d}.bin"
FILE_NAME = re.compile(r"^(?:model\.onnx|weights-\d{3}\.bin)$")
LIVE_FILE_BYTES = 24 * 2**20         # Cloudflare Pages takes files of at most 25 MiB, the smallest limit named
RECORD_BYTES = 16 * 2**20            # a record larger than this is not one (ViT-B/16's, every unit listed: ~0.3 MB)
LIVE_AUTO_BYTES = 200 * 10**6        # "auto": live models whose files total at most this (ViT-B/16 in fp16: ~172 MB)
LIVE_CHOICES = ("auto", "on", "off")
PREPROCESS_OPS = ("resize_shorter", "center_crop", "to_tensor", "normalize")


def live_folder(model: str) -> str:
    """Atlas-relative folder of a model's live model."""
    return f"{LIVE}/{check_model_name(model)}"


@dataclass
class LiveRecord:
    """A live model as found in an atlas: its folder, its record, and its files (name -> sha256), checked."""
    model: str
    folder: Path
    record: dict

    @property
    def files(self) -> dict[str, dict]:
        """Each file's ``bytes`` and ``sha256``, by name (the graph first, then the weights in order)."""
        return self.record["files"]

    @property
    def published_bytes(self) -> int:
        """What the website publishes of this model: every file's bytes."""
        return sum(f["bytes"] for f in self.files.values())

    def read(self, name: str) -> bytes:
        """The bytes of the record's file ``name``, checked against its size and sha256 (a regular file, never
        through a link, read no further than its recorded size allows); AtlasError otherwise."""
        file, entry = self.folder / name, self.files[name]
        data = b""
        if file.is_file() and not file.is_symlink():     # no link, no pipe; never more than the record names
            try:
                with open(file, "rb") as f:
                    data = f.read(entry["bytes"] + 1)
            except OSError:
                pass
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise AtlasError(f"{file} is missing or not the file its record names (make it again: vit-atlas live)")
        return data


def write_live(root: Path, model: str, graph: bytes, weights: list[bytes], record: dict) -> dict:
    """Write (replace) a model's live files and its record (last, so a record always names complete files); returns
    the record as written (with every file's size and sha256)."""
    folder = Path(root) / live_folder(model)
    (folder / RECORD).unlink(missing_ok=True)            # no record while the files change
    files = {GRAPH: graph, **{WEIGHTS.format(i): chunk for i, chunk in enumerate(weights)}}
    for name, data in files.items():
        if len(data) > LIVE_FILE_BYTES:
            raise AtlasError(f"{name} of the live model of {model} is {len(data):,} bytes, over the "
                             f"{LIVE_FILE_BYTES:,} a host takes (docs/HOSTING.md): a single weight that large "
                             "cannot be published; render with --live off")
        write_atomically(folder / name, data)
    for stale in folder.glob("weights-*.bin"):
        if stale.name not in files:
            stale.unlink()
    record = {**record, "files": {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                                  for name, data in files.items()}}
    write_json(folder / RECORD, record)
    return record


def _check_record(record, model: str, where: Path) -> dict:
    """The record's shape, checked (it is read from outside: names are checked before any is joined to a path)."""
    def bad(why: str):
        return AtlasError(f"{where}: {why} (make it again: vit-atlas live)")
    if not isinstance(record, dict) or record.get("model") != model:
        raise bad(f"not the live record of {model}")
    files = record.get("files")
    if not isinstance(files, dict) or GRAPH not in files or not all(
            isinstance(n, str) and FILE_NAME.fullmatch(n) and isinstance(f, dict)
            and isinstance(f.get("bytes"), int) and 0 < f["bytes"] <= LIVE_FILE_BYTES
            and isinstance(f.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", f["sha256"])
            for n, f in files.items()):
        raise bad("its files are not listed as model.onnx and weights-NNN.bin, each with bytes and sha256")
    outputs = record.get("outputs")
    if not isinstance(outputs, list) or not outputs or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) and isinstance(o.get("site"), str)
            and isinstance(o.get("layer"), int) and isinstance(o.get("units"), list)
            and all(isinstance(u, int) and u >= 0 for u in o["units"])
            and isinstance(o.get("grid"), list) and len(o["grid"]) == 2 for o in outputs):
        raise bad("its outputs are not a list of {name, site, layer, units, grid}")
    steps = record.get("preprocess")
    if not isinstance(steps, list) or not all(isinstance(s, dict) and s.get("op") in PREPROCESS_OPS for s in steps):
        raise bad(f"its preprocessing is not a list of {', '.join(PREPROCESS_OPS)} steps")
    if not isinstance(record.get("check"), dict) or record["check"].get("passed") is not True:
        raise bad("it was not checked against PyTorch, or the check failed")
    return record


def read_live(root: Path, model: str, verify_files: bool = True) -> LiveRecord | None:
    """A model's live model, checked (its record's shape; with ``verify_files`` every file's size and sha256);
    None when the atlas has none. AtlasError naming what is wrong otherwise."""
    folder = Path(root) / live_folder(model)
    path = folder / RECORD
    for place in (folder.parent, folder, path):
        if place.is_symlink():                          # an atlas's live model is its own, never read through a link
            raise AtlasError(f"{place} is a symbolic link: an atlas's live model is read only from its own folder "
                             "(replace the link by the files, or make it again: vit-atlas live)")
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            data = f.read(RECORD_BYTES + 1)
        if len(data) > RECORD_BYTES:
            raise ValueError(f"over {RECORD_BYTES:,} bytes")
        record = json.loads(data)
    except (OSError, ValueError) as e:
        raise AtlasError(f"{path} is not a live record ({str(e).splitlines()[0][:120]}; make it again: "
                         "vit-atlas live)") from None
    live = LiveRecord(model, folder, _check_record(record, model, path))
    if verify_files:
        for name in live.files:
            live.read(name)
    return live
