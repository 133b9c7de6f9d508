#!/usr/bin/env python3
"""ViT Atlas command line. `python build.py` with no arguments builds the offline demo atlas.

    python build.py visualize --model NAME [--random-init | --checkpoint FILE] --out DIR
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys

from atlas.format import AtlasError


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="timm model name, optionally with a weights tag")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--random-init", action="store_true", help="random weights (seeded by --init-seed)")
    weights.add_argument("--checkpoint", metavar="FILE", help=".safetensors or .pth state dict for --model")
    p.add_argument("--init-seed", type=int, default=0, help="seed of --random-init weights (default 0)")
    p.add_argument("--model-args", metavar="JSON", default="{}",
                   help='extra keyword arguments for timm.create_model, e.g. \'{"img_size": 384}\'')
    p.add_argument("--name", help="the model's name in the atlas (default: --model)")


def _load(args):
    from builder.models import ModelSource, load_model
    try:
        kwargs = json.loads(args.model_args)
    except ValueError as e:
        raise AtlasError(f"--model-args is not JSON: {e}")
    source = ModelSource(args.model, args.checkpoint, args.random_init, args.init_seed)
    return load_model(source, **kwargs)


def cmd_visualize(args, command: str) -> None:
    from builder.recipe import resolve_recipe
    from builder.schedule import VisualizeJob, run_visualize
    recipe = resolve_recipe(args.preset, steps=args.steps, batch_copies=args.batch_copies, lr=args.lr,
                            tv=args.tv, noise=args.noise)
    lm = _load(args)
    job = VisualizeJob(out=args.out, name=args.name or args.model, recipe=recipe, site=args.site,
                       layers=args.layers, units=args.units, seed=args.seed, device=args.device,
                       precision=args.precision, batch_units=args.batch_units, shard_units=args.shard_units)
    stats = run_visualize(lm, job, command)
    print(f"visualized {stats['units']} units in {stats['shards']} shards "
          f"({stats['already_done']} were already done) into {args.out}")


def cmd_probe(args, command: str) -> None:
    from builder.dataset import scan_images
    from builder.probe import ProbeJob, run_probe
    index = scan_images(args.images, args.labels)  # before loading the model: bad folders fail fast
    print(f"{len(index.paths)} images in {index.root} (layout: {index.layout}, "
          f"{len(index.class_names)} classes{f', {index.ignored} other files ignored' if index.ignored else ''})")
    lm = _load(args)
    job = ProbeJob(out=args.out, name=args.name or args.model, site=args.site, layers=args.layers, k=args.k,
                   batch_size=args.batch_size, device=args.device, precision=args.precision,
                   shard_units=args.shard_units, checkpoint_seconds=args.checkpoint_every, **({"workers": args.workers} if args.workers is not None else {}))
    stats = run_probe(lm, index, job, command)
    print(f"probed {stats['layers']} layers ({stats['shards']} shards) on {stats['images']} images into {args.out}")
    if stats.get("skipped"):
        print(f"skipped {stats['skipped']} files that could not be decoded (listed in dataset.h5 'skipped'):")
        for path, reason in stats["skipped_files"][:20]:
            print(f"  {path}: {reason}")


def parser() -> argparse.ArgumentParser:
    """The command line's parser (subcommands and flags)."""
    p = argparse.ArgumentParser(prog="build.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")

    v = sub.add_parser("visualize", help="optimize one image per unit into an atlas")
    _model_args(v)
    v.add_argument("--site", default="ffn", help="ffn (default), q, k, v, attn or block")
    v.add_argument("--layers", default="all", metavar="SPEC", help="all, 5, 0-3, 0,2,5-7")
    v.add_argument("--units", default="all", metavar="SPEC", help="units of each layer, same SPEC form")
    v.add_argument("--preset", default="paper", help="paper (default) or quick")
    v.add_argument("--steps", type=int, help="override the preset's optimization steps")
    v.add_argument("--batch-copies", type=int, help="override the augmented copies per step")
    v.add_argument("--lr", type=float, help="override the Adam learning rate")
    v.add_argument("--tv", type=float, help="override the total-variation weight")
    v.add_argument("--noise", choices=("pixel", "channel"), help="Gaussian noise per pixel (paper) or per channel")
    v.add_argument("--seed", type=int, default=0, help="seed from which each unit's seed is derived")
    v.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    v.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    v.add_argument("--batch-units", type=int, help="units per batch (default: as many as fit in memory)")
    v.add_argument("--shard-units", type=int, default=256, help="units per shard file (default 256)")
    v.add_argument("--out", required=True, help="atlas folder")
    v.set_defaults(run=cmd_visualize)

    pr = sub.add_parser("probe", help="top-k dataset images, patch maps and statistics of every unit")
    _model_args(pr)
    pr.add_argument("--images", required=True, metavar="DIR", help="image folder (ImageNet, ImageFolder or plain)")
    pr.add_argument("--labels", metavar="FILE", help="CSV relative_path,label (overrides the folder's labels)")
    pr.add_argument("--site", default="ffn", help="ffn (default), q, k, v, attn or block")
    pr.add_argument("--layers", default="all", metavar="SPEC", help="all, 5, 0-3, 0,2,5-7")
    pr.add_argument("--k", type=int, default=16, help="images kept per unit (default 16)")
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--workers", type=int, help="decoding processes (default: min(8, CPUs))")
    pr.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    pr.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    pr.add_argument("--shard-units", type=int, default=256, help="units per new shard file (default 256)")
    pr.add_argument("--checkpoint-every", type=float, default=300, metavar="SECONDS",
                    help="save the running state this often, so a killed pass resumes (default 300)")
    pr.add_argument("--out", required=True, help="atlas folder")
    pr.set_defaults(run=cmd_probe)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    command = "python build.py " + shlex.join(argv)
    try:
        if args.command is None:
            parser().print_help()
            return 0
        args.run(args, command)
    except AtlasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
