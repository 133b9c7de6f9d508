"""A port of the authors' feature-visualization loop, written from the facts in
shared/reference-notes.md (github hamidkazemi22/vit-visualization, experiments/it15/vis35.py and the
classes it uses), for any timm VisionTransformer.

It is the yardstick the engine is compared with (benchmarks/fidelity.py, benchmarks/engine.py), so
it keeps every detail of the runs behind the paper's figures and none of the engine's code:

- one unit at a time, one image initialized ``torch.rand`` in [0, 1], the model's whole forward
  (all blocks and the head) at every step, the unit read by a plain forward hook on
  ``blocks[i].mlp.act``, prefix tokens (CLS, ...) dropped;
- augmentations in their order: 8 copies; ColorJitter ``(x - mu) / sigma`` with mu ~ U(-1, 1),
  sigma = exp(U(-1, 1)) per copy and channel; GaussianNoise as one offset per copy and channel,
  ``N(0, 1) * rem * 0.5 / 400`` where ``rem`` counts down from 398 at the first iteration and wraps
  to 399 after reaching 0 (their counter is advanced once at construction); then one circular shift
  (``random.randint(-32, 32)`` per axis) shared by all copies;
- loss = -(the copies' patch-mean activations).diag().mean() + 0.0005 * 0.1 * TV(augmented):
  ``.diag()`` of the 8-vector builds an 8 x 8 matrix, so the activation term is the copies' mean
  divided by 8; TV is their 4-direction unsquared L2 TV, averaged over copies and channels;
- Adam(lr 0.1, betas (0.5, 0.99)), CosineAnnealingLR(T_max=400, eta_min=0) stepped after every
  iteration, 401 iterations (the last one at lr 0), the image clamped to [0, 1] after each step.

The jitter is 32 px at 224 px; for other image sizes it is scaled the same way the engine scales it
(``round(32 * side / 224)``: 9 px on the demo's 64-px images), because a 32-px roll of a 64-px image
would be a different recipe from the one they ran.

    python benchmarks/authors_loop.py --model vit_atlas_demo --layer 2 --unit 17 --out /tmp/u17.png
"""
from __future__ import annotations

import argparse
import random

import numpy as np
import torch
from PIL import Image

STEPS = 400
COPIES = 8
LR = 0.1
BETAS = (0.5, 0.99)
TV_COEFFICIENT = 0.0005 * 0.1   # vis35.py's 0.0005 * tv, run with -v 0.1
NOISE_STD = 0.5
JITTER_AT_224 = 32
DEMO = "vit_atlas_demo"


def load_plain(name: str, checkpoint: str | None = None, init_seed: int = 0):
    """The plain timm model (eval, frozen) and its input size: the demo's committed weights for the
    demo ViT, ``checkpoint`` when given, else random weights seeded with ``init_seed``."""
    import timm
    import builder.demo.models as demo  # registers the demo models
    if name == DEMO and checkpoint is None:
        checkpoint = str(demo.weights_file(DEMO))
    if checkpoint:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=checkpoint))
    else:
        torch.manual_seed(init_seed)
        model = timm.create_model(name, pretrained=False)
    model.eval().requires_grad_(False)
    size = model.patch_embed.img_size
    return model, tuple(size)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Their TV: for the horizontal, vertical and both diagonal differences, the unsquared L2 norm per
    copy and channel, averaged over copies and channels, summed over the four directions."""
    diffs = (x[:, :, :, 1:] - x[:, :, :, :-1], x[:, :, 1:, :] - x[:, :, :-1, :],
             x[:, :, 1:, 1:] - x[:, :, :-1, :-1], x[:, :, 1:, :-1] - x[:, :, :-1, 1:])
    return sum(d.norm(p=2, dim=(2, 3)).mean() for d in diffs)


def noise_scale(iteration: int, steps: int = STEPS) -> float:
    """Their GaussianNoise std at ``iteration``: a counter started at steps - 1, advanced once when the
    module is built and once per iteration, wrapping around modulo ``steps``."""
    remaining = (steps - 2 - iteration) % steps
    return remaining * NOISE_STD / steps


def patch_activation_hook(model: torch.nn.Module, layer: int):
    """A forward hook on ``blocks[layer].mlp.act`` that keeps the patch tokens' activations [B, N, D]."""
    kept = {}
    prefix = getattr(model, "num_prefix_tokens", 1)
    act = model.blocks[layer].mlp.act
    handle = act.register_forward_hook(lambda _m, _i, out: kept.__setitem__("tokens", out[:, prefix:, :]))
    return kept, handle


def normalizer(model: torch.nn.Module):
    """The model's own input normalization (timm's resolved data config)."""
    import timm.data
    cfg = timm.data.resolve_data_config(model=model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return lambda x: (x - mean.to(x)) / std.to(x)


def authors_unit(model: torch.nn.Module, layer: int, unit: int, size: tuple[int, int], seed: int,
                 steps: int = STEPS, device: str | torch.device = "cpu") -> torch.Tensor:
    """Optimize one image for ``unit`` of FFN layer ``layer`` as their loop does; returns [3, H, W] in [0, 1]."""
    torch.manual_seed(seed)
    random.seed(seed)
    H, W = size
    jitter = round(JITTER_AT_224 * H / 224), round(JITTER_AT_224 * W / 224)
    normalize = normalizer(model)
    image = torch.rand(1, 3, H, W).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=LR, betas=BETAS, eps=1e-8)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, 0.0)
    kept, handle = patch_activation_hook(model, layer)
    try:
        for iteration in range(steps + 1):
            optimizer.zero_grad()
            copies = image.repeat(COPIES, 1, 1, 1)
            mu = (torch.rand(COPIES, 3, 1, 1) - 0.5) * 2
            sigma = ((torch.rand(COPIES, 3, 1, 1) - 0.5) * 2).exp()
            copies = (copies - mu.to(device)) / sigma.to(device)
            copies = copies + torch.randn(COPIES, 3, 1, 1).to(device) * noise_scale(iteration, steps)
            shift = (random.randint(-jitter[0], jitter[0]), random.randint(-jitter[1], jitter[1]))
            copies = torch.roll(copies, shifts=shift, dims=(2, 3))
            model(normalize(copies))
            features = kept["tokens"].mean(dim=1)                # [copies, D]
            activation = features[:COPIES, unit].diag().mean()   # the copies' mean / 8
            # their TV term also scales by (side / image_size)^2, which is 1 at the model's own size
            loss = -activation + TV_COEFFICIENT * total_variation(copies)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                image.clamp_(0, 1)
    finally:
        handle.remove()
    return image.detach()[0]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_atlas_demo")
    p.add_argument("--checkpoint", help="state dict (default for vit_atlas_demo: the committed weights)")
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--unit", type=int, default=0)
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--seed", type=int, help="default: the unit index, as in their runs")
    p.add_argument("--out", default="authors_unit.png")
    args = p.parse_args()
    model, size = load_plain(args.model, args.checkpoint)
    image = authors_unit(model, args.layer, args.unit, size, args.unit if args.seed is None else args.seed,
                         args.steps)
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
