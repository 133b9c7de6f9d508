"""Loading timm models: pretrained, from a local checkpoint, or randomly initialized."""
from __future__ import annotations

import contextlib
import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path

import timm
import timm.data
import torch
from torch import nn

from atlas.format import AtlasError
from atlas.manifest import sha256_file

from .demo import models as _demo_models  # noqa: F401  (registers vit_atlas_demo, resnet_atlas_demo)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from."""
    name: str                      # timm name, optionally with a weights tag: vit_base_patch16_224.augreg_in1k
    checkpoint: str | None = None  # .safetensors or .pth state dict for the named architecture
    random_init: bool = False
    init_seed: int = 0             # seeds random initialization

    @property
    def arch(self) -> str:
        """The architecture part of the name (before the weights tag)."""
        return self.name.split(".", 1)[0]


@dataclass
class LoadedModel:
    """A frozen eval-mode model with what the builder needs to feed it."""
    model: nn.Module
    source: ModelSource
    weights: str           # human-readable provenance: pretrained tag, checkpoint sha256, or random-init seed
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    data_config: dict
    saes: dict = field(default_factory=dict)   # unit site "sae-<name>" -> builder.sae.SAE read on this model
    _copies: dict = field(default_factory=dict, repr=False, compare=False)

    def normalization(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's mean and std as float32 [3] tensors on ``device`` (made once per device)."""
        key = ("normalization", str(device))
        if key not in self._copies:
            self._copies[key] = (torch.tensor(self.mean, device=device), torch.tensor(self.std, device=device))
        return self._copies[key]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map [0,1] pixels to the model's input space (its own mean/std)."""
        mean, std = self.normalization(x.device)
        return (x - mean.view(1, 3, 1, 1).to(x.dtype)) / std.view(1, 3, 1, 1).to(x.dtype)

    def cast(self, dtype: torch.dtype, device) -> nn.Module:
        """The model on ``device`` with the weights of its linear and convolution layers in ``dtype``:
        the model itself for float32, else a copy made once and kept (the engine's weights are never
        re-cast per step). Everything else stays float32 (position embeddings, class and register
        tokens, norms, layer scales), so under autocast the residual stream stays float32 as well:
        the sum of an fp32 embedding and a bf16 product is fp32."""
        if dtype == torch.float32:
            return self.model.to(device)
        key = ("model", dtype, str(device))
        if key not in self._copies:
            model = copy.deepcopy(self.model).to(device)
            for module in model.modules():
                if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                    module.to(dtype)
            self._copies[key] = model
        return self._copies[key]

    def eval_transform(self):
        """timm's eval transform for this model (resize, center crop, normalize)."""
        return timm.data.create_transform(**self.data_config, is_training=False)


def check_model_name(name: str) -> None:
    """Raise AtlasError with close matches when timm does not know ``name`` (arch or weights tag)."""
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise AtlasError(f"timm has no model named {arch!r}{hint} "
                         "(python -c \"import timm; print(timm.list_models('*vit*'))\" lists them)")
    if tag:
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        if tag not in tags:
            close = difflib.get_close_matches(tag, tags, n=5, cutoff=0.4)
            known = ", ".join(close or tags[:8]) or "none"
            raise AtlasError(f"timm has no weights {tag!r} for {arch} (known tags: {known})")


def load_model(source: ModelSource, shapes_only: bool = False, **timm_kwargs) -> LoadedModel:
    """Create the model, load its weights, freeze it, and resolve its input size and normalization.

    ``timm_kwargs`` go to ``timm.create_model`` (tests use them to shrink architectures).
    ``shapes_only`` (with ``random_init``): the model on PyTorch's meta device, shapes without
    numbers, for planning (layers, units, FLOPs) in a fraction of the time and no memory.
    """
    if shapes_only and not source.random_init:
        raise AtlasError("a shapes-only model has random weights: pass random_init")
    check_model_name(source.name)
    if source.checkpoint and source.random_init:
        raise AtlasError("pass either --checkpoint or --random-init, not both")
    if source.checkpoint:
        path = Path(source.checkpoint)
        if path.is_dir():
            raise AtlasError(f"checkpoint {path} is a folder; give the .safetensors or .pth file")
        if not path.is_file():
            raise AtlasError(f"checkpoint {path} does not exist")
        try:
            model = timm.create_model(source.arch, pretrained=True,
                                      pretrained_cfg_overlay=dict(file=str(path.resolve())), **timm_kwargs)
        except TypeError as e:
            raise _bad_model_args(source.arch, e, timm_kwargs) from None
        except Exception as e:  # noqa: BLE001 (safetensors, pickle, torch and timm each raise their own)
            raise AtlasError(f"could not load {path} into {source.arch}: {_checkpoint_problem(e)} (the checkpoint "
                             "must be a state dict of this architecture, as .safetensors or .pth)") from None
        weights = f"checkpoint:{path.name} sha256:{sha256_file(path)}"
    elif source.random_init:
        torch.manual_seed(source.init_seed)
        try:
            with torch.device("meta") if shapes_only else contextlib.nullcontext():
                model = timm.create_model(source.arch, pretrained=False, **timm_kwargs)
        except TypeError as e:
            raise _bad_model_args(source.arch, e, timm_kwargs) from None
        weights = f"random-init seed:{source.init_seed}"
    else:
        try:
            model = timm.create_model(source.name, pretrained=True, **timm_kwargs)
        except TypeError as e:
            raise _bad_model_args(source.arch, e, timm_kwargs) from None
        except Exception as e:  # hub errors come in many classes (OSError, HTTP, LocalEntryNotFound, ...)
            raise AtlasError(
                f"could not get pretrained weights for {source.name} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}). Without network access, download them elsewhere and "
                "pass --checkpoint FILE (a .safetensors or .pth state dict), or use --random-init")
        weights = f"pretrained:{model.pretrained_cfg.get('tag') or source.name}"
    model.eval().requires_grad_(False)
    config = timm.data.resolve_data_config(model=model)
    size = model_input_size(model) or tuple(config["input_size"][1:])
    config["input_size"] = (3, *size)
    return LoadedModel(model, source, weights, size, tuple(config["mean"]), tuple(config["std"]), config)


def _bad_model_args(arch: str, error: TypeError, kwargs: dict) -> AtlasError:
    return AtlasError(f"--model-args {kwargs}: timm's {arch} does not accept them ({str(error).splitlines()[0][:200]})")


def _checkpoint_problem(error: Exception) -> str:
    """What went wrong reading a checkpoint, in one line, without torch's advice to unpickle unsafely."""
    import pickle
    if isinstance(error, pickle.UnpicklingError):
        return ("it is not a plain state dict (it is not a PyTorch file, or it holds pickled objects other than "
                "tensors, which are never loaded)")
    first = str(error).splitlines()[0][:240] if str(error) else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def model_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The image size the model was built for, read off its first patch embedding, else None.

    The pretrained config may disagree with a model built with another ``img_size``.
    """
    for module in model.modules():
        size = getattr(module, "img_size", None)
        if size is not None:
            return (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    return None
