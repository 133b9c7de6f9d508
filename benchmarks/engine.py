"""Engine throughput against one-unit loops, in one run.

    python benchmarks/engine.py                                  # CPU: vit_tiny_patch16_224, layers 0, 5, 11
    python benchmarks/engine.py --model vit_atlas_demo --against authors
    python benchmarks/engine.py --model vit_base_patch16_224 --device cuda --steps 40   # on a GPU

Both sides run the same preset (``paper`` by default) on the model's first, middle and last FFN
layers. The engine optimizes a batch of units per layer (sized as ``build.py visualize`` sizes it),
stopped at the unit's layer, in the default precision and compile mode of the device. The baselines
optimize one unit at a time and run the whole model every step:

- ``naive``: this project's recipe and augmentations, the plain fp32 model (autocast for bf16);
- ``authors``: the port of the authors' loop (benchmarks/authors_loop.py), their recipe exactly.

Rates are *marginal* units/s: each layer is timed with n and 2n units (in batches of the size
``build.py visualize`` would use) and its time per unit is (t(2n) - t(n)) / n, which leaves out fixed
costs (warm-up, compilation, the final measurement); a one-unit loop has no such costs. Layers count
equally, as in a sweep of every unit: the rate is layers / (sum over layers of the time per unit). ``--steps`` shortens every run (rates scale with 1/steps;
figures are projected to the preset's full length). Prints units/s, the ratio, achieved TFLOP/s
(FLOPs of the engine's own passes: forward to the unit, backward to the pixels, no weight gradients,
counted by torch's FLOP counter), its share of ``--peak-tflops`` on CUDA, and the projected hours
for all of the model's FFN units.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from authors_loop import authors_unit
from builder.augment import augment, draw
from builder.counter_rng import seed_tensor
from builder.device import autocast, compute_dtype, resolve_compile, resolve_device, resolve_precision
from builder.forward import image_pass_flops, unit_forward
from builder.models import ModelSource, load_model
from builder.objective import total_variation, unit_losses
from builder.param import Pixel
from builder.recipe import resolve_recipe, unit_seed
from builder.schedule import auto_batch_units
from builder.sites import find_layers
from builder.visualize import Step, optimize_units


def naive_unit(lm, layer, unit, seed, recipe, device, precision):
    """One unit alone with this project's recipe, the whole fp32 model (all blocks and the head) every
    step, read by a forward hook: the loop a first implementation would write."""
    H, W = lm.input_size
    seeds = seed_tensor([seed], device)
    image = Pixel().init(seeds, (H, W)).requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=recipe.lr, betas=recipe.betas)
    captured = {}
    module = lm.model.get_submodule(layer.module)
    handle = module.register_forward_hook(lambda m, i, o: captured.__setitem__("grid", layer.to_grid(o)))
    channel = torch.tensor([unit] * recipe.batch_copies, device=device)
    try:
        for step in range(recipe.steps):
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr_at(step)
            copies = augment(image, draw(seeds, step, recipe, (H, W)))
            with autocast(device, precision):
                lm.model(lm.normalize(copies))
            grid = captured["grid"]
            maps = grid.gather(3, channel.view(-1, 1, 1, 1).expand(*grid.shape[:3], 1)).squeeze(3)
            loss = unit_losses(maps, total_variation(copies).view(1, -1), recipe.tv).sum()
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


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_tiny_patch16_224")
    p.add_argument("--model-args", default="{}", help="JSON keyword arguments for timm.create_model")
    p.add_argument("--preset", default="paper")
    p.add_argument("--steps", type=int, default=20, help="steps of every run (default 20; the preset's own: 0)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--compile", default="auto")
    p.add_argument("--layers", help="comma-separated layers (default: first, middle, last)")
    p.add_argument("--units", type=int, help="engine units per layer, n (default: what fits in one batch)")
    p.add_argument("--batch-units", type=int, help="units per batch (default: what fits, as build.py visualize "
                                                   "sizes it); with --units, a fixed amount of work on any GPU")
    p.add_argument("--against", default="naive", help="naive, authors, or naive,authors")
    p.add_argument("--baseline-units", type=int, default=1, help="units per layer for each baseline")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 peak (H100 SXM: 989)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    compiled = resolve_compile(args.compile, device)
    full = resolve_recipe(args.preset)
    recipe = resolve_recipe(args.preset, steps=args.steps) if args.steps else full
    demo = args.model == "vit_atlas_demo"
    if demo:
        from builder.demo.models import weights_file
        source = ModelSource(args.model, checkpoint=str(weights_file(args.model)))
    else:
        source = ModelSource(args.model, random_init=True)
    lm = load_model(source, **json.loads(args.model_args))
    lm.model.to(device)
    layers = find_layers(lm.model, "ffn", lm.input_size)
    picked = ([int(i) for i in args.layers.split(",")] if args.layers
              else sorted({0, (len(layers) - 1) // 2, len(layers) - 1}))
    total_units = sum(layer.units for layer in layers)
    per_unit_s, flops_per_s = [], []
    for index in picked:
        layer = layers[index]
        forward = unit_forward(lm, layer, compute_dtype(precision), device)
        step = Step(forward, compiled, device)
        fit = args.batch_units or auto_batch_units(lm, layer, recipe, device, precision, forward)
        n = args.units or max(2, min(layer.units // 2, fit))
        seeds = [unit_seed("bench", "ffn", index, u, 0) for u in range(2 * n)]

        def run(count):
            for start in range(0, count, fit):
                chunk = list(range(start, min(count, start + fit)))
                optimize_units(lm, layer, chunk, [seeds[u] for u in chunk], recipe, device, precision, forward, step,
                               pad_to=min(fit, count))
        run(n)  # warm-up and compilation (every batch has one shape, as in build.py visualize)
        run(2 * n)
        t_n, t_2n = timed(lambda: run(n), device), timed(lambda: run(2 * n), device)
        per_unit_s.append((t_2n - t_n) / n)
        flops_per_s.append(recipe.images_per_unit() * image_pass_flops(lm, layer, device) / per_unit_s[-1])
        print(f"  engine L{index}: {n} units in {t_n:.1f} s, {2 * n} in {t_2n:.1f} s (batches of {fit}, {step.mode}) -> "
              f"{1 / per_unit_s[-1]:.3f} units/s marginal", flush=True)
    engine_rate = len(picked) / sum(per_unit_s)

    baselines = {}
    for name in args.against.split(","):
        seconds, done = 0.0, 0
        for index in picked:
            layer = layers[index]
            for u in range(args.baseline_units):
                seed = unit_seed("bench", "ffn", index, u, 0)
                if name == "naive":
                    seconds += timed(lambda: naive_unit(lm, layer, u, seed, recipe, device, precision), device)
                elif name == "authors":
                    seconds += timed(lambda: authors_unit(lm.model, index, u, lm.input_size, seed, recipe.steps,
                                                          device), device)
                else:
                    raise SystemExit(f"unknown baseline {name!r}: naive or authors")
                done += 1
        baselines[name] = done / seconds
        print(f"  {name} loop: {done} units in {seconds:.1f} s", flush=True)

    cpu = platform.processor() or platform.machine()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {cpu}, {torch.get_num_threads()} threads"
    scale = recipe.images_per_unit() / full.images_per_unit()
    print(f"device: {where}; torch {torch.__version__}; model {args.model} {args.model_args} "
          f"({'demo weights' if demo else 'random weights'}); layers {picked}; preset {recipe.preset} "
          f"run for {recipe.steps} of {full.steps} steps; precision {precision}; compile {compiled}")
    print(f"engine: {engine_rate:.3f} units/s marginal ({engine_rate * scale:.4f} units/s at {full.steps} steps)")
    figures = {"engine_units_per_s": engine_rate, "steps": recipe.steps, "device": where, "precision": precision,
               "compile": compiled, "model": args.model, "layers": picked}
    for name, rate in baselines.items():
        print(f"{name}: {rate:.3f} units/s -> engine / {name} = {engine_rate / rate:.2f}x")
        figures[f"{name}_units_per_s"] = rate
    tflops = sum(flops_per_s) / len(flops_per_s) / 1e12
    hours = total_units / (engine_rate * scale) / 3600
    figures.update(tflops=tflops, projected_hours=hours, total_units=total_units)
    line = f"achieved: {tflops:.2f} TFLOP/s"
    if device.type == "cuda":
        line += f" = {100 * tflops / args.peak_tflops:.1f}% of the {args.peak_tflops:g} TFLOP/s bf16 peak"
        figures["peak_share"] = tflops / args.peak_tflops
    print(line)
    print(f"projected: all {total_units:,} FFN units of {args.model} with preset {full.preset}: {hours:.2f} h "
          f"on this device (at these layers' mean rate)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
