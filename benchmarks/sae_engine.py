"""The engine on SAE latents against the same layer's neurons: marginal units/s of each, same recipe,
batch size, precision and compile mode.

    python benchmarks/sae_engine.py --model vit_atlas_demo --sae builder/demo/weights/l3-topk
    python benchmarks/sae_engine.py --model vit_base_patch16_224 --layer 6 --device cuda   # random 16x SAE

Neurons are the layer's FFN units (TruncatedViT where it applies); latents are the SAE's on that block
(its residual stream or MLP output: the hook path, one encoder column per unit). Without ``--sae`` a
random topk SAE with 16x the block's width is made. Rates are marginal: (t(2n) - t(n)) / n per unit,
as in benchmarks/engine.py.
"""
from __future__ import annotations

import argparse
import json
import platform

import torch

from engine import timed
from builder.device import compute_dtype, resolve_compile, resolve_device, resolve_precision
from builder.forward import unit_forward
from builder.models import ModelSource, load_model
from builder.plan import select_layers
from builder.recipe import resolve_recipe, unit_seed
from builder.sae import SAE, load_sae
from builder.visualize import Step, optimize_units


def random_sae(d_in: int, d_sae: int, layer: int) -> SAE:
    g = torch.Generator().manual_seed(0)
    return SAE("random", "saelens", "0" * 64, torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5, torch.zeros(d_sae),
               torch.randn(d_sae, d_in, generator=g) / d_sae ** 0.5, torch.zeros(d_in), "topk", 32, layer=layer)


def marginal_rate(lm, layer, units: int, batch: int, recipe, device, precision, compiled) -> tuple[float, str]:
    """Units/s of ``layer``: time of 2n units minus time of n, per unit."""
    forward = unit_forward(lm, layer, compute_dtype(precision), device)
    step = Step(forward, compiled, device)
    seeds = [unit_seed("bench", layer.site, layer.index, u, 0) for u in range(2 * units)]

    def run(count):
        for start in range(0, count, batch):
            chunk = list(range(start, min(count, start + batch)))
            optimize_units(lm, layer, chunk, [seeds[u] for u in chunk], recipe, device, precision, forward, step,
                           pad_to=min(batch, count))
    run(units)
    t_n, t_2n = timed(lambda: run(units), device), timed(lambda: run(2 * units), device)
    return units / (t_2n - t_n), f"{type(forward).__name__}, {step.mode}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_atlas_demo")
    p.add_argument("--model-args", default="{}")
    p.add_argument("--sae", help="an SAE checkpoint (default: a random topk SAE, 16x the width)")
    p.add_argument("--layer", type=int, help="the block (default: the SAE's, else the middle one)")
    p.add_argument("--preset", default="quick")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--units", type=int, default=32, help="n: units timed per side (n and 2n)")
    p.add_argument("--batch-units", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--compile", default="auto")
    p.add_argument("--json")
    args = p.parse_args()
    device = resolve_device(args.device)
    precision, compiled = resolve_precision(args.precision, device), resolve_compile(args.compile, device)
    if args.model == "vit_atlas_demo":
        from builder.demo.models import weights_file
        source = ModelSource(args.model, checkpoint=str(weights_file(args.model)))
    else:
        source = ModelSource(args.model, random_init=True)
    lm = load_model(source, **json.loads(args.model_args))
    lm.model.to(device)
    sae = load_sae(args.sae) if args.sae else None
    index = args.layer if args.layer is not None else sae.layer if sae and sae.layer is not None else None
    if index is None:
        index = len(select_layers(lm, "ffn", "all", "0")) // 2
    if sae is None:
        width = lm.model.blocks[index].mlp.fc1.in_features
        sae = random_sae(width, 16 * width, index)
    lm.saes[sae.site] = sae
    recipe = resolve_recipe(args.preset, steps=args.steps)
    (neuron_layer, _), = select_layers(lm, "ffn", str(index), "0")
    (latent_layer, _), = select_layers(lm, sae.site, str(index), "0")
    neurons, n_how = marginal_rate(lm, neuron_layer, args.units, args.batch_units, recipe, device, precision, compiled)
    latents, l_how = marginal_rate(lm, latent_layer, args.units, args.batch_units, recipe, device, precision, compiled)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device: {where}; model {args.model}; block {index}; SAE {sae.name} ({sae.d_sae} latents, {sae.activation}, "
          f"{sae.hook}); preset {recipe.preset}, {recipe.steps} steps; batches of {args.batch_units}; {precision}")
    print(f"neurons: {neurons:.2f} units/s ({n_how}); latents: {latents:.2f} units/s ({l_how}); "
          f"latents / neurons = {latents / neurons:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"neurons_units_per_s": neurons, "latents_units_per_s": latents, "ratio": latents / neurons,
                       "device": where, "block": index, "sae": sae.record()}, f, indent=1)


if __name__ == "__main__":
    main()
