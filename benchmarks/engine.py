"""Engine throughput vs the naive loop (one unit at a time, full forward, as the authors' code).

    python benchmarks/engine.py                       # CPU: vit_tiny_patch16_224, random weights
    python benchmarks/engine.py --model vit_base_patch16_224 --device cuda --precision bf16 \
        --steps 20 --units-per-layer 64 --naive-units 2

Both sides run the same recipe, augmentations and loss; the naive loop optimizes each unit alone
and runs the whole model (all blocks and the head) every step. Prints units/s for both and the
ratio; on CUDA also the achieved TFLOP/s (counted with torch's FLOP counter) and the projected
hours for every FFN unit of the model.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

from builder.augment import augment, draw
from builder.models import ModelSource, load_model
from builder.objective import unit_losses
from builder.recipe import resolve_recipe, unit_seed
from builder.schedule import auto_batch_units, resolve_device
from builder.sites import find_layers, run_to
from builder.visualize import autocast, optimize_units


def naive_unit(lm, layer, unit, seed, recipe, device, precision):
    """One unit alone, full forward every step (the authors' loop, with this project's recipe)."""
    H, W = lm.input_size
    g = torch.Generator(device=device).manual_seed(seed)
    image = torch.rand(1, 3, H, W, generator=g, device=device).requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=recipe.lr, betas=recipe.betas)
    captured = {}
    module = lm.model.get_submodule(layer.module)
    handle = module.register_forward_hook(lambda m, i, o: captured.__setitem__("grid", layer.to_grid(o)))
    try:
        for step in range(recipe.steps):
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))
            copies = augment(image, draw([g], recipe, (H, W), device), recipe.noise_std(step))
            with autocast(device, precision):
                lm.model(lm.normalize(copies))  # the whole model, head included
            loss = unit_losses(captured["grid"], copies, torch.tensor([unit], device=device),
                               recipe.batch_copies, recipe.tv).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                image.clamp_(0, 1)
    finally:
        handle.remove()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_flops(lm, layer, n_images, device, precision) -> float:
    """FLOPs of one optimization step on ``n_images`` augmented copies (forward to the layer and
    backward to the pixels), by torch's FLOP counter (matrix products and attention)."""
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.rand(n_images, 3, *lm.input_size, device=device, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        with autocast(device, precision):
            (grid,) = run_to(lm.model, lm.normalize(x), [layer])
        grid[..., 0].float().mean().backward()
    return counter.get_total_flops()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_tiny_patch16_224")
    p.add_argument("--model-args", default="{}", help="JSON keyword arguments for timm.create_model")
    p.add_argument("--preset", default="quick")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--units-per-layer", type=int, default=8, help="engine: units per layer, all layers")
    p.add_argument("--naive-units", type=int, default=1, help="naive loop: units per layer, all layers")
    p.add_argument("--batch-units", type=int, help="engine batch (default: auto)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 peak (H100 SXM: 989)")
    args = p.parse_args()

    device = resolve_device(args.device)
    # augmented steps only on both sides (the naive loop is the authors', which has no clean steps)
    recipe = resolve_recipe(args.preset, steps=args.steps, clean_steps=0)
    lm = load_model(ModelSource(args.model, random_init=True), **json.loads(args.model_args))
    lm.model.to(device)
    layers = find_layers(lm.model, "ffn", lm.input_size)
    total_units = sum(layer.units for layer in layers)

    # warm-up (allocator, kernels)
    optimize_units(lm, layers[0], [0], [1], resolve_recipe(args.preset, steps=2, clean_steps=0), device, args.precision)

    sync(device)
    t0 = time.perf_counter()
    done = 0
    for layer in layers:
        units = list(range(args.units_per_layer))
        batch = args.batch_units or auto_batch_units(lm, layer, recipe, device, args.precision)
        for i in range(0, len(units), batch):
            chunk = units[i:i + batch]
            optimize_units(lm, layer, chunk, [unit_seed("bench", "ffn", layer.index, u, 0) for u in chunk],
                           recipe, device, args.precision)
        done += len(units)
    sync(device)
    engine_s = time.perf_counter() - t0
    engine_rate = done / engine_s

    t0 = time.perf_counter()
    naive_done = 0
    for layer in layers:
        for u in range(args.naive_units):
            naive_unit(lm, layer, u, unit_seed("bench", "ffn", layer.index, u, 0), recipe, device, args.precision)
            naive_done += 1
    sync(device)
    naive_s = time.perf_counter() - t0
    naive_rate = naive_done / naive_s

    cpu = platform.processor() or platform.machine()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {cpu}, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; model {args.model} {args.model_args} (random weights); "
          f"recipe {recipe.preset} steps={recipe.steps} copies={recipe.batch_copies}; precision {args.precision}")
    print(f"engine: {done} units in {engine_s:.1f} s = {engine_rate:.3f} units/s")
    print(f"naive:  {naive_done} units in {naive_s:.1f} s = {naive_rate:.3f} units/s")
    print(f"ratio:  {engine_rate / naive_rate:.2f}x")
    if device.type == "cuda":
        flops = recipe.steps * sum(step_flops(lm, layer, args.units_per_layer * recipe.batch_copies, device,
                                              args.precision) for layer in layers)
        tflops = flops / engine_s / 1e12
        print(f"achieved: {tflops:.1f} TFLOP/s = {100 * tflops / args.peak_tflops:.1f}% of {args.peak_tflops} peak")
        full = resolve_recipe("paper")
        hours = total_units / engine_rate * (full.steps * full.batch_copies) / (recipe.steps * recipe.batch_copies) / 3600
        print(f"projected: {total_units} FFN units with preset paper: {hours:.1f} h")


if __name__ == "__main__":
    main()
