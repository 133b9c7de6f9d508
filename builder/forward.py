"""The forward pass of one optimization step: images in, each image's own unit on the patch grid out.

Two implementations with one contract, ``forward(x [B, 3, H, W], units [U]) -> maps [B, h, w]`` where
the B images are U groups of B/U adjacent copies and group u reads channel ``units[u]``, and
``forward.copies(rolled, scale, offset, pixel_noise, units)``, the same for copies given per source
image: copy k of unit u is ``scale[u, k] * rolled[u] + offset[u, k] (+ pixel_noise[u, k])`` per channel.

- ``TruncatedViT``, for timm VisionTransformers (ViT, DeiT, CLIP image towers, register models) at the
  ``ffn`` site: the patch embedding, the blocks before the unit's, the unit's block up to its ``fc1``,
  and of ``fc1`` only the rows of the units in the batch (one dot product per token instead of the
  layer's full width). When a unit's copies share their shift and carry no per-pixel noise, they
  differ by a per-channel affine map, and the patch embedding (linear) is computed once per channel
  of the source image and combined per copy: its forward and backward cost 1/copies of the usual.
  Plain modules and tensors, so it compiles (``torch.compile``, CUDA graphs).
- ``HookForward``, for every other model and site: the traced hook path (``sites.run_to``, stopped by
  an exception) and a gather of each image's channel; at an SAE site, each image's latent's
  pre-activation (one encoder column; a TopK or JumpReLU output has no gradient where it is zero).
  Always eager.

Both run the model copy ``LoadedModel.cast`` holds for the compute dtype (weights cast once, not by
autocast at every step) under autocast, which keeps norms and softmax in fp32.
"""
from __future__ import annotations

import torch
from torch import nn

from .augment import build_copies
from .models import LoadedModel
from .objective import unit_maps
from .sites import Layer, run_to


class TruncatedViT(nn.Module):
    """A timm VisionTransformer run exactly up to the FFN activation of block ``layer.index``."""

    def __init__(self, model: nn.Module, layer: Layer):
        super().__init__()
        self.model = model
        self.depth = layer.index
        self.prefix = layer.prefix
        self.grid = layer.grid
        self.per_channel_embedding = _linear_patchifier(model.patch_embed)

    def forward(self, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        return self._from_tokens(self.model.patch_embed(x), units)

    def copies(self, rolled, scale, offset, pixel_noise, units) -> torch.Tensor:
        """The maps of every copy, with the patch embedding per source channel where the copies allow."""
        if pixel_noise is not None or rolled.shape[1] != 1 or not self.per_channel_embedding:
            return self.forward(build_copies(rolled, scale, offset, pixel_noise), units)
        pe = self.model.patch_embed
        U, C = scale.shape[:2]
        w = pe.proj.weight                                                   # (D, 3, p, q)
        D, _, p, q = w.shape
        H, W = rolled.shape[-2:]
        patches = rolled[:, 0].reshape(U, 3, H // p, p, W // q, q).permute(0, 1, 2, 4, 3, 5)
        patches = patches.reshape(U, 3, (H // p) * (W // q), p * q)         # (U, 3, T, p*q)
        per_channel = torch.matmul(patches, w.reshape(D, 3, p * q).permute(1, 2, 0).to(patches.dtype))  # (U, 3, T, D)
        tokens = torch.einsum("ukc,uctd->uktd", scale.to(per_channel.dtype), per_channel)
        constant = offset.to(w.dtype) @ w.sum(dim=(2, 3)).t()              # (U, C, D): the offsets' embedding
        if pe.proj.bias is not None:
            constant = constant + pe.proj.bias
        tokens = tokens + constant[:, :, None, :].to(tokens.dtype)
        return self._from_tokens(pe.norm(tokens.reshape(U * C, -1, D)), units)

    def _from_tokens(self, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.norm_pre(m.patch_drop(m._pos_embed(x)))
        for block in m.blocks[:self.depth]:
            x = block(x)
        block = m.blocks[self.depth]
        x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
        tokens = block.norm2(x)[:, self.prefix:]                        # (B, T, D) patch tokens only
        fc1 = block.mlp.fc1
        U = units.shape[0]
        B, T, D = tokens.shape
        tokens = tokens.reshape(U, (B // U) * T, D)                      # (U, copies * T, D)
        rows = fc1.weight[units][:, :, None]                             # (U, D, 1): the units' fc1 rows
        if fc1.bias is None:
            pre = torch.bmm(tokens, rows)
        else:
            pre = torch.baddbmm(fc1.bias[units].view(U, 1, 1), tokens, rows)
        return block.mlp.act(pre).view(B, *self.grid)


class HookForward:
    """Any model and site: forward until the layer fires (hook + exception), then each image's channel."""

    def __init__(self, model: nn.Module, layer: Layer):
        self.model = model
        self.layer = layer

    def copies(self, rolled, scale, offset, pixel_noise, units) -> torch.Tensor:
        """The maps of every copy (built as images)."""
        return self(build_copies(rolled, scale, offset, pixel_noise), units)

    def __call__(self, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        sae = self.layer.sae
        (grid,) = run_to(self.model, x, [self.layer], sae_input=sae is not None)   # (B, h, w, C)
        channels = units.repeat_interleave(grid.shape[0] // units.shape[0])
        if sae is not None:            # an SAE latent: its pre-activation, one encoder column per image
            return sae.unit_pre(grid, channels)
        return unit_maps(grid, channels)


def _linear_patchifier(pe: nn.Module) -> bool:
    """Whether ``pe`` is timm's PatchEmbed as a plain patchifying conv (kernel = stride, no padding) on
    3 channels with tokens out: then it is linear per channel and can be combined per copy."""
    from timm.layers import PatchEmbed
    proj = getattr(pe, "proj", None)
    return (type(pe) is PatchEmbed and isinstance(proj, nn.Conv2d) and proj.in_channels == 3
            and proj.kernel_size == proj.stride and proj.padding == (0, 0) and proj.groups == 1
            and proj.dilation == (1, 1) and pe.flatten and not getattr(pe, "dynamic_img_pad", False))


def truncatable(model: nn.Module, layer: Layer) -> bool:
    """Whether ``TruncatedViT`` computes exactly what the hook path reads at ``layer``: a timm
    VisionTransformer whose blocks up to the layer are plain ``Block``s with a plain ``Mlp``."""
    from timm.layers import Mlp
    from timm.models.vision_transformer import Block, VisionTransformer
    if not isinstance(model, VisionTransformer) or layer.site != "ffn" or layer.layout != "tokens":
        return False
    if layer.module != f"blocks.{layer.index}.mlp.act" or layer.call != 0:
        return False
    blocks = list(model.blocks[:layer.index + 1])
    last = blocks[-1]
    return (all(type(b) is Block for b in blocks) and type(last.mlp) is Mlp
            and isinstance(last.mlp.fc1, nn.Linear) and not getattr(model, "grad_checkpointing", False))


def unit_forward(lm: LoadedModel, layer: Layer, dtype: torch.dtype, device: torch.device,
                 truncate: bool = True):
    """The forward for ``layer`` in ``dtype`` on ``device``: ``TruncatedViT`` where it applies (and
    ``truncate``), else ``HookForward``."""
    model = lm.cast(dtype, device)
    if truncate and truncatable(model, layer):
        return TruncatedViT(model, layer)
    return HookForward(model, layer)


def image_pass_flops(lm: LoadedModel, layer: Layer, device=None) -> float:
    """FLOPs of one image's pass in the engine at ``layer``: the forward to the unit's activation (the
    truncated forward where it applies, with its one fc1 row) and the backward to the pixels, with no
    weight gradients (weights are frozen), as torch's FLOP counter counts them."""
    from torch.utils.flop_counter import FlopCounterMode
    device = device or next(lm.model.parameters()).device
    forward = unit_forward(lm, layer, torch.float32, device)
    x = torch.rand(1, 3, *lm.input_size, device=device, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        forward(lm.normalize(x), torch.zeros(1, dtype=torch.long, device=device)).float().mean().backward()
    return float(counter.get_total_flops())


def planned_pass_flops(lm: LoadedModel, layers: list[Layer]) -> dict[int, float]:
    """The planning estimate of ``image_pass_flops`` for every layer in ``layers`` (by index), from one
    forward of the whole model: 2x the forward FLOPs of one image up to the layer's activation (the
    backward to the pixels costs about one forward; weights are frozen), where the truncated forward
    applies with one ``fc1`` row instead of the layer's whole width. Works on the meta device, so
    `build.py plan` needs no weights and no memory. Measured: 4-11% above the exact count for ViT-B/16
    and a tiny ViT (a test bounds it); calibration divides by the same estimate, so projected hours agree."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    wanted = {(layer.module, layer.call): layer for layer in layers}
    before_fc1 = {layer.module.rsplit(".", 1)[0] + ".fc1": layer for layer in layers
                  if truncatable(lm.model, layer)}
    calls: dict[str, int] = {}
    reached: dict[int, float] = {}

    def at(name: str):
        def hook(_module, _inputs, _output):
            call = calls.get(name, 0)
            calls[name] = call + 1
            layer = wanted.get((name, call))
            if layer is not None and layer.index not in reached:
                reached[layer.index] = 2.0 * counter.get_total_flops()
        return hook

    def one_row(name: str):
        def hook(_module, inputs):
            layer = before_fc1[name]
            if layer.index not in reached:                      # the fc1 row of one unit: 2 T D
                reached[layer.index] = 2.0 * (counter.get_total_flops() + 2 * inputs[0][0].numel())
        return hook

    handles = [m.register_forward_pre_hook(one_row(n)) for n, m in lm.model.named_modules() if n in before_fc1]
    handles += [m.register_forward_hook(at(n)) for n, m in lm.model.named_modules() if n in {k for k, _ in wanted}]
    device = next(lm.model.parameters()).device
    try:
        with counter, torch.no_grad():
            lm.model(torch.zeros(1, 3, *lm.input_size, device=device))
    finally:
        for h in handles:
            h.remove()
    return reached
