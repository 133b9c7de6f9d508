"""`vit-atlas live`: the live model of the website's "Try an image" view (issue 32), into ``live/<model>/``.

The model is cut after the deepest layer the atlas holds (the forward stops there, as the probe's does) and
returns, for every site and layer of the atlas, the patch grid of the atlas's units: ``[1, h, w, units]``, the
values the probe averages into a unit's score. It is exported with ``torch.onnx`` (the TorchScript exporter: one
trace, a second for the demo), its weights moved out of the graph into files a host takes (fp16 storage, fp32
compute, for models whose fp32 weights would exceed ``FP32_STORAGE_BYTES``), then run with onnxruntime on a few
dataset images beside PyTorch: refused, with the figure, unless every unit's mean is PyTorch's to
``FP32_TOLERANCE`` (fp32 storage) or every layer's top-``TOP`` units are PyTorch's (fp16 storage).

The record also says how to prepare an image exactly as timm's eval transform for the model does, step by step
(the website's live.js ports Pillow's resampling to follow it to the last bit).
"""
from __future__ import annotations

import io
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from atlas.dataset import Dataset
from atlas.folder import prepare_atlas_folder
from atlas.format import DATASET, AtlasError, SAE_SITE
from atlas.images import ImageError, load_rgb
from atlas.live import GRAPH, LIVE_FILE_BYTES, WEIGHTS, write_live
from atlas.log import append_log
from atlas.manifest import write_manifest
from atlas.reader import Atlas
from atlas.website.context import dataset_images

from .models import LoadedModel
from .sites import Layer, find_layers, run_to, sae_layer

OPSET = 17
FP32_STORAGE_BYTES = 32 * 2**20      # weights up to this are stored as they are; larger ones in fp16
FP32_TOLERANCE = 1e-4                # fp32 storage: every unit's mean within this of PyTorch's
TOP = 20                             # fp16 storage: every layer's top-20 units by mean kept
CHECK_IMAGES = 4
INLINE_ELEMENTS = 1024               # smaller tensors stay in the graph
RESAMPLED = ("bilinear", "bicubic", "box", "hamming", "lanczos")   # Pillow's convolution filters, which live.js ports


@dataclass
class LiveJob:
    """What `vit-atlas live` makes: the live model of ``name`` in the atlas ``out``."""
    out: Path
    name: str
    storage: str = "auto"            # auto, fp32 or fp16
    images: list[Path] | None = None  # check images (default: the atlas's dataset, else seeded noise)
    command: str = ""


class LiveForward(nn.Module):
    """The model up to its deepest wanted layer, returning each layer's patch grid of the wanted units."""

    def __init__(self, model: nn.Module, layers: list[Layer], units: list[list[int]]):
        super().__init__()
        self.model, self.layers = model, layers
        self.picks = [None if u == list(range(layer.units)) else torch.tensor(u, dtype=torch.long)
                      for layer, u in zip(layers, units)]

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        grids = run_to(self.model, pixels, self.layers)
        return tuple(g if pick is None else g.index_select(-1, pick) for g, pick in zip(grids, self.picks))


def atlas_layers(lm: LoadedModel, root: Path, name: str) -> tuple[list[Layer], list[list[int]], list[str]]:
    """The layers of every site of ``name`` in the atlas that ``lm`` can read, their units in the atlas, and the
    sites it cannot (an SAE whose checkpoint is not loaded)."""
    with Atlas(root) as a:
        if name not in a.models:
            raise AtlasError(f"{root} holds no model {name!r} (it holds {', '.join(a.models) or 'none'}): pass --name")
        order = sorted(a.sites(name), key=lambda s: (s != "ffn", not SAE_SITE.match(s), s))   # FFN, SAEs, the rest
        wanted = {site: {layer: list(a.units(name, layer, site)) for layer in a.layers(name, site)} for site in order}
        info = a.models_info.get(name, {})
    recorded = info.get("weights")
    if recorded and recorded != lm.weights:
        raise AtlasError(f"the atlas's {name} was made with weights {recorded}, not {lm.weights}: give the atlas's own "
                         "model (--checkpoint, --random-init and --init-seed as it was built)")
    layers, units, missing = [], [], []
    blocks = None
    for site, by_layer in wanted.items():
        if SAE_SITE.match(site):
            if site not in lm.saes:
                missing.append(site)
                continue
            blocks = blocks or find_layers(lm.model, "block", lm.input_size)
            sae = lm.saes[site].to("cpu")          # exported on the CPU, wherever the probe ran it
            found = {layer: sae_layer(lm.model, sae, lm.input_size, layer, blocks) for layer in by_layer}
        else:
            found = {layer.index: layer for layer in find_layers(lm.model, site, lm.input_size)}
        for layer, unit_list in sorted(by_layer.items()):
            if layer not in found:
                raise AtlasError(f"{name} has no layer {layer} of {site}: is this the atlas's model?")
            width = (info.get("sites", {}).get(site, {}).get(f"{layer:02d}") or {}).get("units")
            if (unit_list and unit_list[-1] >= found[layer].units) or (width and width != found[layer].units):
                raise AtlasError(f"{site} L{layer} of this {name} has {found[layer].units} units, the atlas's "
                                 f"{width or unit_list[-1] + 1}: is this the atlas's model?")
            layers.append(found[layer])
            units.append(unit_list)
    return layers, units, missing


def preprocess_steps(transform) -> list[dict]:
    """timm's eval transform as steps live.js follows: resize the shorter side (Pillow's filter), center crop,
    to tensor, normalize. AtlasError for a step it cannot follow exactly."""
    from torchvision import transforms as T
    steps = []
    for t in getattr(transform, "transforms", [transform]):
        kind = type(t).__name__
        if isinstance(t, T.Resize):
            size = t.size if isinstance(t.size, int) else t.size[0] if len(t.size) == 1 else None
            filter_ = t.interpolation.value
            if size is None or t.max_size is not None or filter_ not in RESAMPLED:
                raise AtlasError(f"the live view cannot prepare images as {t} does (it follows a resize of the shorter "
                                 f"side with one of {', '.join(RESAMPLED)}): render with --live off")
            steps.append({"op": "resize_shorter", "size": int(size), "filter": filter_, "pass_order": pass_order()})
        elif isinstance(t, T.CenterCrop):
            steps.append({"op": "center_crop", "size": [int(s) for s in t.size]})
        elif kind in ("ToTensor", "MaybeToTensor"):
            steps.append({"op": "to_tensor"})
        elif isinstance(t, T.Normalize):
            steps.append({"op": "normalize", "mean": [float(v) for v in np.asarray(t.mean, np.float32).ravel()],
                          "std": [float(v) for v in np.asarray(t.std, np.float32).ravel()]})
        else:
            raise AtlasError(f"the live view cannot prepare images as timm's {kind} does: render with --live off")
    return steps


def pass_order() -> str:
    """Which of its two passes the installed Pillow resamples first: ``pillow13`` (from Pillow 13: the vertical pass
    first when the height shrinks by more than twice as many pixels as the width) or ``horizontal_first`` (before).
    The two orders round differently, so live.js follows the Pillow that prepared the atlas's images."""
    import PIL
    return "pillow13" if int(PIL.__version__.split(".")[0]) >= 13 else "horizontal_first"


def storage_for(lm: LoadedModel, storage: str) -> str:
    """fp32 or fp16: ``storage``, or for "auto" fp32 up to ``FP32_STORAGE_BYTES`` of weights."""
    if storage != "auto":
        return storage
    return "fp32" if 4 * sum(p.numel() for p in lm.model.parameters()) <= FP32_STORAGE_BYTES else "fp16"


def published_bytes(lm: LoadedModel, storage: str) -> int:
    """About what the live model's weights publish (every parameter; the cut drops the head and later blocks)."""
    return (2 if storage_for(lm, storage) == "fp16" else 4) * sum(p.numel() for p in lm.model.parameters())


def export_graph(forward: LiveForward, size: tuple[int, int], names: list[str]) -> bytes:
    """The forward as ONNX bytes, weights inside (TorchScript exporter: a trace, no compiler stack)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the exporter's deprecation notice and the trace's own notes
        torch.onnx.export(forward, (torch.zeros(1, 3, *size),), buffer, input_names=["pixels"], output_names=names,
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return buffer.getvalue()


def split_weights(graph: bytes, storage: str) -> tuple[bytes, list[bytes]]:
    """The graph with its larger tensors moved into weight files of at most LIVE_FILE_BYTES each (fp16 storage:
    stored in fp16 with a Cast back to fp32 before use, so every product is still fp32)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    model = onnx.load_model_from_string(graph)
    casts = []
    files: list[bytearray] = [bytearray()]
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.size < INLINE_ELEMENTS:
            continue
        if storage == "fp16" and array.dtype == np.float32:
            stored = f"{tensor.name}.fp16"
            casts.append(helper.make_node("Cast", [stored], [tensor.name], to=TensorProto.FLOAT))
            array = array.astype(np.float16)
            tensor.CopyFrom(numpy_helper.from_array(array, stored))
        raw = np.ascontiguousarray(array).tobytes()
        if len(raw) > LIVE_FILE_BYTES:
            raise AtlasError(f"the weight {tensor.name} is {len(raw):,} bytes, more than a host takes in one file "
                             f"({LIVE_FILE_BYTES:,}): this model cannot be published live (--live off)")
        if len(files[-1]) + len(raw) > LIVE_FILE_BYTES:
            files.append(bytearray())
        offset = len(files[-1])
        files[-1] += raw + bytes(-len(raw) % 64)              # 64-byte aligned, as onnx's own writer does
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", WEIGHTS.format(len(files) - 1)), ("offset", str(offset)),
                           ("length", str(len(raw)))):
            tensor.external_data.add(key=key, value=value)
    if casts:
        nodes = list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(casts + nodes)
    return model.SerializeToString(), [bytes(f) for f in files if f]


def check_images(lm: LoadedModel, root: Path, images: list[Path] | None, seed: int = 0) -> tuple[torch.Tensor, str]:
    """A few images through the model's eval transform: ``images``, else the atlas's dataset's first ones, else
    seeded noise; and which."""
    from PIL import Image
    paths = images
    if paths is None and (root / DATASET).is_file():
        d = Dataset(root / DATASET)
        folder = dataset_images(root, d)
        paths = [folder / p for p in d.paths[:CHECK_IMAGES]] if folder.is_dir() else None
    transform = lm.eval_transform()
    pictures = []
    for path in paths or []:
        try:
            pictures.append(load_rgb(path))
        except ImageError:
            continue
    source = "dataset images"
    if not pictures:
        rng = np.random.default_rng(seed)
        pictures = [Image.fromarray(rng.integers(0, 256, (*lm.input_size, 3), dtype=np.uint8)) for _ in range(CHECK_IMAGES)]
        source = "seeded noise images"
    return torch.stack([transform(p) for p in pictures[:CHECK_IMAGES]]), source


def check_against_torch(forward: LiveForward, folder: Path, pixels: torch.Tensor, storage: str,
                        names: list[str]) -> dict:
    """Run the exported model with onnxruntime beside PyTorch on ``pixels``: the figures, and whether it passed."""
    import onnxruntime
    session = onnxruntime.InferenceSession(str(folder / GRAPH), providers=["CPUExecutionProvider"])
    worst, kept, compared = 0.0, True, 0
    for x in pixels:
        with torch.no_grad():
            expected = [g.mean(dim=(1, 2))[0].numpy() for g in forward(x[None])]
        got = [o.mean(axis=(1, 2))[0] for o in session.run(names, {"pixels": x[None].numpy()})]
        for e, g in zip(expected, got):
            worst = max(worst, float(np.abs(e.astype(np.float64) - g).max()))
            top = min(TOP, len(e))
            kept &= set(np.argsort(-e, kind="stable")[:top]) == set(np.argsort(-g, kind="stable")[:top])
            compared += 1
    passed = worst <= FP32_TOLERANCE if storage == "fp32" else kept
    return {"images": len(pixels), "outputs_compared": compared, "max_abs_diff_of_means": worst,
            f"top{TOP}_kept": bool(kept), "passed": bool(passed),
            "bar": f"every mean within {FP32_TOLERANCE:g}" if storage == "fp32" else f"every layer's top-{TOP} kept",
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def make_live(lm: LoadedModel, job: LiveJob) -> dict:
    """Export, check and write the live model of ``job.name``; returns its record. AtlasError (with the figure)
    when onnxruntime and PyTorch disagree."""
    start = time.perf_counter()
    root = prepare_atlas_folder(job.out)              # no link anywhere it writes, before any work
    model = lm.model.to("cpu").float().eval()                # traced and checked on the CPU, wherever the probe ran
    layers, units, missing = atlas_layers(lm, root, job.name)
    if not layers:
        raise AtlasError(f"no site of {job.name} in {root} can be read on this model (SAE checkpoints not given: "
                         f"{', '.join(missing)}): pass --sae")
    storage = storage_for(lm, job.storage)
    names = [f"{layer.site}/L{layer.index:02d}" for layer in layers]
    forward = LiveForward(model, layers, units).eval()
    steps = preprocess_steps(lm.eval_transform())
    graph, weights = split_weights(export_graph(forward, lm.input_size, names), storage)
    pixels, source = check_images(lm, root, job.images)
    with tempfile.TemporaryDirectory(prefix="vit-atlas-live-") as tmp:
        folder = Path(tmp)
        (folder / GRAPH).write_bytes(graph)
        for i, chunk in enumerate(weights):
            (folder / WEIGHTS.format(i)).write_bytes(chunk)
        check = check_against_torch(forward, folder, pixels, storage, names)
    check["source"] = source
    if not check["passed"]:
        raise AtlasError(f"the live model of {job.name} does not match PyTorch on {len(pixels)} {source}: largest "
                         f"difference of a unit's mean {check['max_abs_diff_of_means']:.3g}, top-{TOP} kept "
                         f"{check[f'top{TOP}_kept']} (bar: {check['bar']}); not published"
                         + (" (try --storage fp32)" if storage == "fp16" else ""))
    record = {"model": job.name, "weights": lm.weights, "opset": OPSET, "storage": storage,
              "input": {"name": "pixels", "shape": [1, 3, *lm.input_size]},
              "preprocess": steps,
              "outputs": [{"name": n, "site": layer.site, "layer": layer.index, "grid": list(layer.grid), "units": u}
                          for n, layer, u in zip(names, layers, units)],
              "left_out": missing, "check": check, "seconds": round(time.perf_counter() - start, 2)}
    record = write_live(root, job.name, graph, weights, record)
    write_manifest(root, job.command)
    append_log(root, {"stage": "live", "model": job.name, "storage": storage, "seconds": record["seconds"]})
    return record
