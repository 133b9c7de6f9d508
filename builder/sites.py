"""Where units live in a timm model, and a forward pass that stops as soon as it has them.

A *layer* is one firing of an FFN activation (``blocks[i].mlp.act`` and its equivalents), numbered
0.. in forward order; a module shared between several calls (CoaT's parallel blocks run one MLP on
three scales) gives one layer per call. A *site* picks what is read at that layer:

    ffn    the MLP's activation output (post-GELU hidden units)      [the paper's choice]
    q/k/v  the block's fused qkv projection, split in three (heads concatenated)
    attn   the block's attention output, after its projection
    block  the residual stream after the block
    sae-<name>  the latents of a sparse autoencoder on one block's residual stream or MLP output
                (builder.sae; ``sae_layer``)

Every site's output is viewed as a patch grid ``[B, h, w, C]``: tokens that are not patches (CLS,
distillation, register tokens) are dropped, and hierarchical models give each layer its own grid.
Layers are discovered by tracing one forward pass, so any timm model whose MLPs follow timm's
``fc1 -> act -> fc2`` naming works without a per-family adapter.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import nn

from atlas.format import SITES, AtlasError

# Modules under these names belong to heads and poolers, not to the per-patch blocks.
_NOT_BLOCKS = ("head", "attn_pool", "fc_norm", "pre_logits")


class StopForward(Exception):
    """Raised from a hook once every wanted layer has been captured: deeper blocks never run."""


@dataclass(frozen=True)
class Layer:
    """One layer of one site: which module call to hook and how to read its output as a patch grid."""
    index: int
    site: str
    module: str                 # dotted path of the hooked module
    call: int                   # which call of that module in one forward pass
    channels: tuple[int, int]   # channel range of the module output holding this site's units
    layout: str                 # "tokens" [B, N, C], "nhwc" [B, h, w, C] or "nchw" [B, C, h, w]
    prefix: int                 # non-patch tokens before the grid ("tokens" layout)
    grid: tuple[int, int]       # (h, w) patch grid
    sae: object = field(default=None, compare=False, repr=False)   # builder.sae.SAE of an SAE site

    @property
    def units(self) -> int:
        """Number of units (channels) at this layer."""
        return self.channels[1] - self.channels[0]

    def to_grid(self, output: torch.Tensor) -> torch.Tensor:
        """View the hooked module's output as ``[B, h, w, units]`` (patch tokens only); at an SAE site
        the latents' values of the tokens it reads."""
        if self.sae is not None:
            return self.sae.encode(self.sae_input(output))
        if self.layout == "nchw":
            output = output.permute(0, 2, 3, 1)
        elif self.layout == "tokens":
            output = output[:, self.prefix:, :].reshape(output.shape[0], *self.grid, output.shape[-1])
        lo, hi = self.channels
        return output if (lo, hi) == (0, output.shape[-1]) else output[..., lo:hi]

    def sae_input(self, output: torch.Tensor) -> torch.Tensor:
        """An SAE site's input tokens as ``[B, h, w, d_in]``: the patch tokens, or the CLS token as a
        1x1 grid for an SAE trained on CLS only."""
        tokens = output[:, :1] if self.sae.tokens == "cls" else output[:, self.prefix:]
        return tokens.reshape(output.shape[0], *self.grid, output.shape[-1])


def _mlp_activations(model: nn.Module) -> list[str]:
    """Paths of the activation modules inside the model's MLP blocks (``...mlp.act``)."""
    found = []
    for name, module in model.named_modules():
        act = getattr(module, "act", None)
        is_mlp = hasattr(module, "fc2") and (hasattr(module, "fc1") or hasattr(module, "fc1_g"))
        if is_mlp and isinstance(act, nn.Module) and not any(part in _NOT_BLOCKS for part in name.split(".")):
            found.append(f"{name}.act" if name else "act")
    return found


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _site_module(model: nn.Module, block: str, site: str) -> tuple[str, tuple[int, int] | None] | None:
    """The module that holds ``site`` in ``block`` and, for q/k/v, the slice's position (i of 3)."""
    prefix = f"{block}." if block else ""
    try:
        if site == "block":
            return block, None
        attn = model.get_submodule(f"{prefix}attn")
        if site == "attn":
            return f"{prefix}attn", None
        qkv = getattr(attn, "qkv", None)
        if isinstance(qkv, nn.Linear) and qkv.out_features % 3 == 0:
            return f"{prefix}attn.qkv", ("qkv".index(site), 3)
    except AttributeError:
        pass
    return None


def _trace(model: nn.Module, modules: list[str], input_size: tuple[int, int]):
    """Run one forward pass; return (module, call, output) for every call of ``modules``, in order."""
    calls, counts, handles = [], Counter(), []

    def hook(name):
        def record(_module, _inputs, output):
            calls.append((name, counts[name], output))
            counts[name] += 1
        return record

    for name in dict.fromkeys(modules):
        handles.append(model.get_submodule(name).register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            param = next(model.parameters(), None)
            device = param.device if param is not None else "cpu"
            model(torch.rand(2, 3, *input_size, device=device))
    finally:
        for h in handles:
            h.remove()
    return calls


def token_grid(n_tokens: int, image_size: tuple[int, int], hints=()) -> tuple[int, tuple[int, int]] | None:
    """Split ``n_tokens`` into (prefix tokens, (h, w) grid) with the image's aspect ratio.

    The model's own prefix counts are tried first (``hints``), then 0, 1 and 2 (none, CLS, CLS and
    distillation): ConViT, for one, adds its CLS token only after its first blocks.
    """
    H, W = image_size
    for exact in (True, False):
        for prefix in dict.fromkeys([*hints, 0, 1, 2]):
            m = n_tokens - prefix
            if m <= 0:
                continue
            h = max(1, round(math.sqrt(m * H / W)))
            if m % h:
                continue
            w = m // h
            if (h * W == w * H) if exact else abs(h / w - H / W) < 0.05 * H / W:
                return prefix, (h, w)
    return None


def _layout(output, image_size, hints, channels_last: bool) -> tuple[str, int, tuple[int, int]] | None:
    """How to read a module output as a patch grid: (layout, prefix, grid), or None if it is not one."""
    if not torch.is_tensor(output) or output.shape[0] != 2:  # windowed attention folds windows into batch
        return None
    H, W = image_size
    if output.dim() == 3:
        split = token_grid(output.shape[1], image_size, hints)
        return ("tokens", split[0], split[1]) if split else None
    if output.dim() == 4:
        h, w = output.shape[1:3] if channels_last else output.shape[2:4]
        if h * W == w * H:
            return ("nhwc" if channels_last else "nchw", 0, (int(h), int(w)))
    return None


def _find(model: nn.Module, site: str, input_size: tuple[int, int]) -> list[Layer]:
    acts = _mlp_activations(model)
    targets = {}  # FFN activation -> (module holding the site, (i, n) slice of its channels or None)
    for act in acts:
        found = (act, None) if site == "ffn" else _site_module(model, _parent(_parent(act)), site)
        if found:
            targets[act] = found
    calls = _trace(model, acts + [m for m, _ in targets.values()], input_size)
    hints = [h for h in (getattr(model, "num_prefix_tokens", None), getattr(model, "num_tokens", None))
             if isinstance(h, int)]
    fired = Counter(name for name, _, _ in calls)
    first_output = {}
    for name, _, output in calls:
        first_output.setdefault(name, output)
    layers = []
    ffn_calls = [(name, call, output) for name, call, output in calls if name in acts]
    for index, (act, call, output) in enumerate(ffn_calls):
        if act not in targets:
            continue
        module, part = targets[act]
        if site != "ffn":
            if fired[act] != 1:  # a shared MLP: the block's other modules do not line up with its calls
                continue
            call, output = 0, first_output[module]
        fc1 = getattr(model.get_submodule(_parent(act)), "fc1", None)
        layout = _layout(output, input_size, hints, channels_last=not isinstance(fc1, nn.Conv2d))
        if layout is None:
            continue
        kind, prefix, grid = layout
        total = output.shape[1] if kind == "nchw" else output.shape[-1]
        channels = (0, total) if part is None else (part[0] * total // part[1], (part[0] + 1) * total // part[1])
        layers.append(Layer(index, site, module, call, channels, kind, prefix, grid))
    return layers


def find_layers(model: nn.Module, site: str = "ffn", input_size: tuple[int, int] = (224, 224)) -> list[Layer]:
    """The layers of ``site`` in forward order. Indices follow the FFN layers, so L3 is the same block
    for every site. Raises AtlasError when the model has no such site."""
    if site not in SITES:
        raise AtlasError(f"unknown site {site!r}; sites are {', '.join(SITES)}")
    if not _mlp_activations(model):
        raise AtlasError(f"{type(model).__name__} has no MLP blocks with an activation (mlp.act) to visualize")
    layers = _find(model, site, input_size)
    if not layers:
        raise AtlasError(f"site {site!r} is not available for {type(model).__name__} "
                         f"(available: {', '.join(available_sites(model, input_size)) or 'none'})")
    return layers


def sae_layer(model: nn.Module, sae, input_size: tuple[int, int], index: int | None = None,
              blocks: list[Layer] | None = None) -> Layer:
    """The layer of an SAE's latents: the block it reads (its own, else ``index``), hooked where the SAE
    was trained (``resid_post``: the block's output; ``mlp_out``: its ``ls2``, the MLP's scaled output).
    AtlasError when the model has no such block or its width is not the SAE's input. ``blocks``: the
    model's ``block`` layers when the caller has them (tracing them again costs a forward)."""
    blocks = {layer.index: layer for layer in (blocks or find_layers(model, "block", input_size))}
    index = sae.layer if sae.layer is not None else index
    if index is None:
        raise AtlasError(f"the SAE {sae.name!r} does not say which block it reads: pass --layers with that one block")
    if sae.layer is not None and index != sae.layer:
        raise AtlasError(f"the SAE {sae.name!r} reads block {sae.layer}, not {index}: pass --layers {sae.layer} or all")
    if index not in blocks or blocks[index].layout != "tokens":
        raise AtlasError(f"{type(model).__name__} has no token block {index} for the SAE {sae.name!r} "
                         f"(blocks: {min(blocks)}-{max(blocks)})" if blocks else "no token blocks")
    block = blocks[index]
    module = block.module
    if sae.hook == "mlp_out":
        module = f"{block.module}.ls2"
        try:
            model.get_submodule(module)
        except AttributeError:
            raise AtlasError(f"{type(model).__name__}'s block {index} has no ls2 (the MLP's output) for the SAE "
                             f"{sae.name!r} trained on hook_mlp_out") from None
    if block.units != sae.d_in:
        raise AtlasError(f"the SAE {sae.name!r} reads {sae.d_in} channels but block {index} of "
                         f"{type(model).__name__} has {block.units}: it was trained on another model")
    grid = (1, 1) if sae.tokens == "cls" else block.grid
    return replace(block, site=sae.site, module=module, channels=(0, sae.d_sae), grid=grid, sae=sae)


def available_sites(model: nn.Module, input_size: tuple[int, int]) -> list[str]:
    """The sites ``find_layers`` can read for this model."""
    return [site for site in SITES if _find(model, site, input_size)]


def run_to(model: nn.Module, x: torch.Tensor, layers: list[Layer],
           on_capture: Callable[[int, torch.Tensor], object] | None = None, sae_input: bool = False) -> list:
    """Forward ``x`` until every layer in ``layers`` has fired, then stop (no deeper block, no head).

    Returns each layer's patch grid ``[B, h, w, units]``, or what ``on_capture(i, grid)`` returns for it
    (the probe consumes each layer's activations as they come instead of holding all of them); with
    ``sae_input``, an SAE layer's input tokens instead of its latents.
    """
    wanted = defaultdict(list)
    for i, layer in enumerate(layers):
        wanted[layer.module].append((layer.call, i))
    results: list = [None] * len(layers)
    counts: Counter = Counter()
    remaining = len(layers)

    def hook(name):
        def capture(_module, _inputs, output):
            nonlocal remaining
            call = counts[name]
            counts[name] += 1
            for want_call, i in wanted[name]:
                if want_call == call:
                    layer = layers[i]
                    grid = layer.sae_input(output) if sae_input and layer.sae is not None else layer.to_grid(output)
                    results[i] = on_capture(i, grid) if on_capture else grid
                    remaining -= 1
            if remaining == 0:
                raise StopForward
        return capture

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in wanted]
    try:
        model(x)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    if remaining:
        missing = [layers[i].index for i, r in enumerate(results) if r is None]
        raise RuntimeError(f"the forward pass ended before reaching layers {missing}")
    return results
