"""ViT Atlas command line: `vit-atlas` (installed), `python build.py` (a checkout), `python -m builder`.
With no arguments it builds the offline demo atlas.

    vit-atlas                            the demo: dataset, visualize, probe, website in ./atlas-demo
    vit-atlas visualize --model NAME [--random-init | --checkpoint FILE] --out DIR
    vit-atlas probe --model NAME [...] --images DIR --out DIR
    vit-atlas analyze NAME --model NAME [...] --images DIR [--boxes FILE] --out DIR
    vit-atlas render DIR                 then: vit-atlas serve DIR
    vit-atlas run SPEC.toml              a whole build from a spec (plan / finalize / verify too)
    vit-atlas make-dataset --out DIR [--n N] [--seed S]
    vit-atlas train-demo [--out DIR]
"""
from __future__ import annotations

import argparse
import errno
import json
import shlex
import sys
from pathlib import Path

from atlas import __version__
from atlas.format import AtlasError, set_program


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="timm model name, optionally with a weights tag")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--random-init", action="store_true", help="random weights (seeded by --init-seed)")
    weights.add_argument("--checkpoint", metavar="FILE", help=".safetensors or .pth state dict for --model")
    p.add_argument("--init-seed", type=int, default=0, help="seed of --random-init weights (default 0)")
    p.add_argument("--model-args", metavar="JSON", default="{}",
                   help='extra keyword arguments for timm.create_model, e.g. \'{"img_size": 384}\'')
    p.add_argument("--name", help="the model's name in the atlas (default: --model)")


def _device_args(p: argparse.ArgumentParser, precision: bool = True, compile: bool = False) -> None:
    from builder.device import COMPILE_CHOICES, DEFAULT_COMPILE, DEFAULT_DEVICE, DEFAULT_PRECISION, PRECISIONS
    p.add_argument("--device", default=DEFAULT_DEVICE, help="auto (cuda when present), cpu, cuda or cuda:N")
    if precision:
        p.add_argument("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS,
                       help="auto (default): bf16 for visualize on CUDA, fp32 for everything else; fp32 is IEEE "
                            "fp32 (no TF32); tf32: fp32 with TF32 tensor-core products (CUDA)")
    if compile:
        p.add_argument("--compile", default=DEFAULT_COMPILE, choices=COMPILE_CHOICES,
                       help="torch.compile the engine's step: auto (default) compiles on CUDA only")


def _load(args):
    from builder.models import ModelSource, load_model
    try:
        kwargs = json.loads(args.model_args)
    except ValueError as e:
        raise AtlasError(f"--model-args is not JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise AtlasError(f"--model-args must be a JSON object of keyword arguments, e.g. '{{\"img_size\": 384}}', "
                         f"not {args.model_args}")
    source = ModelSource(args.model, args.checkpoint, args.random_init, args.init_seed)
    return load_model(source, **kwargs)


def _sae_args(p: argparse.ArgumentParser) -> None:
    from builder.sae import SAE_FORMATS
    p.add_argument("--sae", metavar="PATH", help="a sparse autoencoder's checkpoint (with --site sae): its latents are the units")
    p.add_argument("--sae-format", choices=SAE_FORMATS, help="the checkpoint's format (default: detected)")
    p.add_argument("--sae-name", help="its name in the atlas: the site is sae-<name> (default: from the path)")
    p.add_argument("--sae-run", metavar="RUN", help="the run to read of a release of many checkpoints (saev's "
                                                    "manifest.jsonl); --layers N picks it too when one run has that layer")


def _site(args, lm) -> str:
    """The unit site the command reads: --site, or the latents of the SAE --sae names (then read onto ``lm``)."""
    if args.sae is None:
        if args.sae_run is not None:
            raise AtlasError("--sae-run picks a run of the release --sae PATH names: pass --sae too")
        if args.site == "sae":
            raise AtlasError("--site sae needs --sae PATH (a SAELens folder, a ViT-Prisma config.json + .pt, or a saev sae.pt)")
        return args.site
    if args.site not in ("sae", "ffn"):
        raise AtlasError(f"--sae reads an SAE's latents: pass --site sae, not --site {args.site}")
    from builder.sae import load_sae
    block = int(args.layers) if str(args.layers).strip().isdigit() else None
    sae = load_sae(args.sae, args.sae_format, args.sae_name, args.sae_run, block)
    lm.saes[sae.site] = sae
    return sae.site


def _jitter(text: str) -> tuple[int, int]:
    """--jitter N (pixels of the input, as asked) or P% (of each side): (jitter, jitter_reference)."""
    value = text.strip()
    try:
        if value.endswith("%"):
            return int(value[:-1]), 100          # P px for a 100-px side: P% of any side, scaled and floored
        return int(value), 0
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not N (pixels) or P% (of each side)") from None


def cmd_visualize(args, command: str) -> None:
    from builder.recipe import resolve_recipe
    from builder.schedule import VisualizeJob, run_visualize
    jitter, reference = args.jitter if args.jitter is not None else (None, None)
    recipe = resolve_recipe(args.preset, steps=args.steps, batch_copies=args.batch_copies, lr=args.lr,
                            tv=args.tv, tv_input=args.tv_input, tv_norm=args.tv_norm, noise=args.noise,
                            jitter=jitter, jitter_reference=reference, jitter_shared=args.jitter_shared,
                            rotate=args.rotate, scale_jitter=args.scale_jitter, color_shift_mean=args.color_shift_mean,
                            color_shift_log_std=args.color_shift_log_std, parametrization=args.parametrization,
                            clean_steps=args.clean_steps)
    lm = _load(args)
    job = VisualizeJob(out=args.out, name=args.name or args.model, recipe=recipe, site=_site(args, lm),
                       layers=args.layers, units=args.units, seed=args.seed, device=args.device,
                       precision=args.precision, compile=args.compile, batch_units=args.batch_units, shard_units=args.shard_units)
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
    job = ProbeJob(out=args.out, name=args.name or args.model, site=_site(args, lm), layers=args.layers, units=args.units,
                   k=args.k,
                   batch_size=args.batch_size, device=args.device, precision=args.precision,
                   shard_units=args.shard_units, checkpoint_seconds=args.checkpoint_every, workers=args.workers,
                   related=args.related, related_k=args.related_k, sketch_dims=args.sketch_dims)
    stats = run_probe(lm, index, job, command)
    print(f"probed {stats['layers']} layers ({stats['shards']} shards) on {stats['images']} images into {args.out}")
    if stats.get("skipped"):
        print(f"skipped {stats['skipped']} files that could not be decoded (listed in dataset.h5 'skipped'):")
        for path, reason in stats["skipped_files"][:20]:
            print(f"  {path}: {reason}")


def cmd_train_sae(args, command: str) -> None:
    from builder.dataset import scan_images
    from builder.train_sae import TrainJob, run_train_sae, sae_folder
    layers = args.layers.split(",")
    if len(layers) != 1 or not layers[0].strip().isdigit():
        raise AtlasError(f"--layers {args.layers}: train-sae trains on one block, e.g. --layers 3")
    job = TrainJob(out=Path(args.out), layer=int(layers[0]), hook=args.hook, kind=args.kind, latents=args.latents,
                   k=args.k, l1=args.l1, steps=args.steps, batch_tokens=args.batch_tokens, lr=args.lr, seed=args.seed,
                   batch_size=args.batch_size, workers=args.workers, device=args.device)
    sae_folder(job.out)                   # a wrong --out fails before the images are read or the model loaded
    index = scan_images(args.images, None)
    lm = _load(args)
    m = run_train_sae(lm, index, job, args.name or args.model)
    print(f"trained a {args.kind} SAE of {args.latents} latents on block {job.layer} ({args.hook}) of {len(index.paths)} "
          f"images into {args.out}: explained variance {m['explained_variance']:.1%}, L0 {m['l0']:.1f}, "
          f"dead {m['dead_fraction']:.1%} (held-out tokens)")


def cmd_map(args, command: str) -> None:
    from atlas.format import score_file
    from atlas.reader import Atlas
    from builder.maps import run_maps
    a = Atlas(args.dir)
    pairs = [(m, s) for m in a.models for s in a.sites(m) if (Path(args.dir) / score_file(m, s)).is_file()
             and args.model in (None, m) and args.site in (None, s)]
    a.close()
    if not pairs:
        raise AtlasError(f"{args.dir} holds no probe scores of {args.model or 'any model'}/{args.site or 'any site'}: "
                         "run the probe first (the map is made from every unit's scores on the dataset)")
    for model, site in pairs:
        trust = run_maps(Path(args.dir), model, site, args.seed, command)
        print(f"laid out {model}/{site}: trustworthiness " + ", ".join(f"L{layer} {t:.3f}" for layer, t in trust.items()))


def cmd_label(args, command: str) -> None:
    from builder.labels import LabelJob, run_labels
    from builder.spec import LabelSources
    sources = LabelSources(broden=args.broden and Path(args.broden), classes=args.classes, hierarchy=args.hierarchy,
                           attributes=args.attributes and Path(args.attributes), clip=args.clip,
                           words=args.words and Path(args.words), vocabulary=args.vocabulary, k=args.k)
    if not sources.any():
        raise AtlasError("label needs a source: --broden DIR (pixel concepts), --classes or --attributes CSV "
                         "(image-level concepts), or --clip MODEL (open vocabulary)")
    lm = _load(args)
    job = LabelJob(out=Path(args.out), name=args.name or args.model, sources=sources, site=_site(args, lm),
                   layers=args.layers, batch_size=args.batch_size, workers=args.workers, device=args.device,
                   checkpoint_seconds=args.checkpoint_every, command=command)
    done = run_labels(lm, job)
    print(f"labelled {job.name}/{job.site} in {args.out}: " + ", ".join(f"{n} units by {s}" for s, n in done.items()))


def cmd_live(args, command: str) -> None:
    from builder.dataset import scan_images
    from builder.live import LiveJob, make_live
    lm = _load(args)
    if args.sae:
        args.site = "sae"
        _site(args, lm)
    images = None
    if args.images:
        index = scan_images(args.images)
        images = [index.root / p for p in index.paths]
    record = make_live(lm, LiveJob(out=Path(args.out), name=args.name or args.model, storage=args.storage,
                                   images=images, command=command))
    check = record["check"]
    print(f"live model of {record['model']} in {args.out}/live/{record['model']}/: {len(record['outputs'])} layers, "
          f"{record['storage']} weights, {sum(f['bytes'] for f in record['files'].values()) / 1e6:.1f} MB; checked on "
          f"{check['images']} {check['source']}: largest difference of a unit's mean {check['max_abs_diff_of_means']:.1e}"
          + (f"; left out (no checkpoint given): {', '.join(record['left_out'])}" if record["left_out"] else ""))


def cmd_make_dataset(args, command: str) -> None:
    from builder.demo.shapes import make_dataset
    out = make_dataset(args.out, args.n, args.seed, args.concepts, args.concept_images)
    print(f"{args.n} images (seed {args.seed}) in {out}, boxes in {out / 'boxes.csv'}"
          + (f"; their attributes in {out / 'attributes.csv'}, concept dataset in {args.concepts}" if args.concepts else ""))


def cmd_train_demo(args, command: str) -> None:
    from builder.demo.models import CNN, VIT
    from builder.demo.train import TrainConfig, train_demo
    cfg = TrainConfig(seed=args.seed, n_train=args.n_train,
                      **{k: v for k, v in (("epochs_vit", args.epochs), ("epochs_cnn", args.epochs),
                                           ("epochs_clip", args.epochs), ("robust_epochs", args.robust_epochs)) if v})
    from builder.demo.clip import NAME as CLIP
    names = {"vit": VIT, "cnn": CNN, "clip": CLIP}
    unknown = set(args.models.split(",")) - set(names)
    if unknown:
        raise AtlasError(f"--models {args.models}: models are vit, cnn and clip")
    record = train_demo(args.out, cfg, [names[m] for m in args.models.split(",")], command, vit_from=args.vit_from)
    for name, info in record.items():
        score = ("held-out word accuracy " + ", ".join(f"{kind} {v:.2%}" for kind, v in info['held_out_word_accuracy'].items())
                 if name == CLIP
                 else f"held-out accuracy {info['held_out_accuracy']:.2%}")
        print(f"{name}: {score}, train loss {info['train_loss_first']:.3f} -> {info['train_loss_last']:.3f}")


def cmd_analyze(args, command: str) -> None:
    from builder.analyses import AnalysisJob, run_analysis
    from builder.dataset import scan_images
    index = scan_images(args.images, args.labels) if args.images else None
    lm = _load(args)
    job = AnalysisJob(out=args.out, name=args.name or args.model, index=index, boxes=args.boxes,
                      batch_size=args.batch_size, device=args.device, limit=args.limit, seed=args.seed,
                      layers=args.layers, units=args.units, threshold=args.threshold, command=command,
                      workers=args.workers)
    done = run_analysis(args.analysis, lm, job)
    print(f"analyses {', '.join(done) or 'none'} of {job.name} written to {args.out}/analyses/")


def cmd_render(args, command: str) -> None:
    from atlas.website import render
    index = render(args.dir, out=args.out, workers=args.workers, base_url=args.base_url, images=args.images,
                   data_url=args.data_url, offline=args.offline, fresh=args.fresh, live=args.live)
    print(f"website written to {index.parent}; open {index}")


def cmd_serve(args, command: str) -> None:
    from atlas.serve import make_server
    with make_server(args.dir, args.port) as server:
        print(f"serving {args.dir} at http://127.0.0.1:{server.server_address[1]}/site/index.html (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


def _share(args):
    from builder.shares import detect_share
    return detect_share(args.share_index, args.num_shares)


def cmd_run(args, command: str) -> None:
    from builder.pipeline import run_spec
    from builder.spec import load_spec
    spec = load_spec(args.spec)
    share = _share(args)
    stats = run_spec(spec, share, command)
    print(f"share {share.index + 1}/{share.count} ({share.source}): {stats['computed']} of its {stats['shards']} "
          f"shards computed now; " + ("finalized: manifest written, website at " + str(spec.out / "site/index.html")
                                      if stats["finalized"] else "other shares are still running or finalizing"))


def cmd_plan(args, command: str) -> None:
    from builder.pipeline import plan_report
    from builder.spec import load_spec
    print(plan_report(load_spec(args.spec), shares=args.num_shares or _share(args).count, measure=not args.no_calibrate))


def cmd_finalize(args, command: str) -> None:
    from builder.pipeline import finalize, spec_of_atlas
    index = finalize(spec_of_atlas(args.dir), command)
    print(f"finalized {args.dir}: manifest written, website at {index}")


def cmd_export(args, command: str) -> None:
    from atlas.export import export_parquet
    if args.format != "parquet":
        raise AtlasError(f"--format {args.format}: only parquet is supported")
    card = export_parquet(args.dir, args.out, args.max_file_mb)
    print(f"exported {args.dir} to {args.out} (dataset card: {card})")


def cmd_verify(args, command: str) -> None:
    from atlas.verify import quarantine_notes, verify
    problems = verify(args.dir)
    for note in quarantine_notes(args.dir):
        print(f"quarantine: {note}")
    for p in problems:
        print(p)
    if problems:
        raise AtlasError(f"{len(problems)} problems in {args.dir}")
    print(f"{args.dir}: every file matches the manifest; shards, schema, values and coverage are intact")


def cmd_demo(args, command: str) -> None:
    from builder.demo.build import build_demo
    build_demo(args.out, command)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that name the fix (the --help of the command)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} ({self.prog} --help lists the flags)\n")


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser (subcommands and flags); ``prog`` is how the user runs it."""
    from builder import defaults as D
    p = _Parser(prog=prog or program(), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"vit-atlas {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    v = sub.add_parser("visualize", help="optimize one image per unit into an atlas")
    _model_args(v)
    v.add_argument("--site", default="ffn", help="ffn (default), q, k, v, attn, block, or sae (with --sae)")
    _sae_args(v)
    v.add_argument("--layers", default="all", metavar="SELECTION", help="all, 5, 0-3, 0,2,5-7")
    v.add_argument("--units", default="all", metavar="SELECTION", help="units of each layer, same SELECTION form")
    from builder.recipe import PRESET_HELP
    v.add_argument("--preset", default="paper", choices=list(PRESET_HELP), metavar="PRESET",
                   help="the recipe to start from: " + "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()) +
                        " (default paper); every flag below overrides one of its settings")
    v.add_argument("--steps", type=int, help="override the preset's optimization steps")
    v.add_argument("--batch-copies", type=int, help="override the augmented copies per step")
    v.add_argument("--lr", type=float, help="override the Adam learning rate")
    v.add_argument("--tv", type=float, help="override the total-variation weight (against the mean activation)")
    v.add_argument("--tv-input", choices=("augmented", "unnoised"),
                   help="TV of the augmented copies, or of the copies before the Gaussian noise")
    v.add_argument("--clean-steps", type=int, help="override how many final steps optimize the unaugmented image")
    v.add_argument("--noise", choices=("pixel", "channel"),
                   help="Gaussian noise per copy and channel (paper preset) or per pixel (paper-text)")
    v.add_argument("--tv-norm", choices=("l2", "l1"),
                   help="TV as the authors computed it (l2: each difference image's L2 norm) or the mean absolute "
                        "difference (l1: flat regions, sharp edges)")
    v.add_argument("--jitter", type=_jitter, metavar="N|P%",
                   help="largest shift per axis: N pixels of the model's input, as asked, or P%% of each side (never "
                        "below one of the layer's patches); presets give it for a 224-pixel side, scaled and floored "
                        "the same way")
    v.add_argument("--jitter-shared", action=argparse.BooleanOptionalAction, default=None,
                   help="one shift for all copies of a step (paper preset), or one per copy (--no-jitter-shared)")
    v.add_argument("--rotate", type=float, metavar="DEGREES", help="largest rotation of a copy (fourier preset: 10)")
    v.add_argument("--scale-jitter", type=float, metavar="S", help="largest zoom of a copy, in [1 - S, 1 + S] (fourier: 0.1)")
    v.add_argument("--color-shift-mean", type=float, metavar="A",
                   help="colour shift: mu ~ U(-A, A) per copy and channel (paper: 1; fourier: 0)")
    v.add_argument("--color-shift-log-std", type=float, metavar="B",
                   help="colour shift: sigma = exp(U(-B, B)) per copy and channel (paper: 1; fourier: 0)")
    v.add_argument("--parametrization", choices=("pixel", "fourier"),
                   help="what is optimized: the pixels (picture part viz) or a decorrelated Fourier spectrum (part "
                        "fourier)")
    v.add_argument("--seed", type=int, default=D.SEED, help="seed from which each unit's seed is derived")
    _device_args(v, compile=True)
    v.add_argument("--batch-units", type=int, help="units per batch (default: as many as fit in memory)")
    v.add_argument("--shard-units", type=int, default=D.SHARD_UNITS, help=f"units per shard file (default {D.SHARD_UNITS})")
    v.add_argument("--out", required=True, help="atlas folder")
    v.set_defaults(run=cmd_visualize)

    pr = sub.add_parser("probe", help="top-k dataset images, patch maps and statistics of every unit")
    _model_args(pr)
    pr.add_argument("--images", required=True, metavar="DIR", help="image folder (ImageNet, ImageFolder or plain)")
    pr.add_argument("--labels", metavar="FILE", help="CSV relative_path,label (overrides the folder's labels)")
    pr.add_argument("--site", default="ffn", help="ffn (default), q, k, v, attn, block, or sae (with --sae)")
    _sae_args(pr)
    pr.add_argument("--layers", default="all", metavar="SELECTION", help="all, 5, 0-3, 0,2,5-7")
    pr.add_argument("--units", default="all", metavar="SELECTION", help="units of each layer to store (default all)")
    pr.add_argument("--k", type=int, default=D.TOP_K, help=f"images kept per unit (default {D.TOP_K})")
    pr.add_argument("--batch-size", type=int, default=D.BATCH_SIZE)
    pr.add_argument("--workers", type=int, help="decoding processes (default: min(8, CPUs))")
    _device_args(pr)
    pr.add_argument("--shard-units", type=int, default=D.SHARD_UNITS, help=f"units per new shard file (default {D.SHARD_UNITS})")
    pr.add_argument("--related", default="auto", choices=("auto", "exact", "sketch", "off"),
                    help="related units from per-image scores: exact, a random-projection sketch, or auto "
                         "(exact up to 512 MB of float16 scores)")
    pr.add_argument("--related-k", type=int, default=D.RELATED_K, help=f"related units kept per unit and scope (default {D.RELATED_K})")
    pr.add_argument("--sketch-dims", type=int, default=D.SKETCH_DIMS, help=f"dimensions of the sketch (default {D.SKETCH_DIMS})")
    pr.add_argument("--checkpoint-every", type=float, default=D.CHECKPOINT_SECONDS, metavar="SECONDS",
                    help="save the running state this often, so a killed pass resumes (default %(default)s)")
    pr.add_argument("--out", required=True, help="atlas folder")
    pr.set_defaults(run=cmd_probe)

    from builder.train_sae import KINDS, TrainJob as T
    ts = sub.add_parser("train-sae", help="train a small sparse autoencoder on one block's activations (SAELens format)")
    _model_args(ts)
    ts.add_argument("--images", required=True, metavar="DIR", help="image folder to train on")
    ts.add_argument("--layers", required=True, metavar="BLOCK", help="the block whose activations it reads")
    ts.add_argument("--hook", default=T.hook, choices=("resid_post", "mlp_out"),
                    help=f"resid_post: the block's output; mlp_out: its MLP's (ls2) (default {T.hook})")
    ts.add_argument("--kind", default=T.kind, choices=KINDS, help=f"topk, or relu with an L1 penalty (default {T.kind})")
    ts.add_argument("--latents", type=int, default=T.latents, help=f"number of latents (default {T.latents})")
    ts.add_argument("--k", type=int, default=T.k, help=f"topk: latents kept per token (default {T.k})")
    ts.add_argument("--l1", type=float, default=T.l1, help=f"relu: L1 weight (default {T.l1})")
    ts.add_argument("--steps", type=int, default=T.steps, help=f"Adam steps (default {T.steps})")
    ts.add_argument("--batch-tokens", type=int, default=T.batch_tokens, help=f"tokens per step (default {T.batch_tokens})")
    ts.add_argument("--lr", type=float, default=T.lr)
    ts.add_argument("--seed", type=int, default=D.SEED)
    ts.add_argument("--batch-size", type=int, default=D.BATCH_SIZE, help="images per forward while collecting")
    ts.add_argument("--workers", type=int, help="decoding processes (default: min(8, CPUs))")
    ts.add_argument("--device", default=T.device, help=f"cpu or cuda (default {T.device})")
    ts.add_argument("--out", required=True, help="folder to write cfg.json and sae_weights.safetensors into")
    ts.set_defaults(run=cmd_train_sae)

    lb = sub.add_parser("label", help="describe every unit by concepts: pixel concepts (Network Dissection), "
                                      "image-level concepts (INVERT), an open vocabulary (CLIP-Dissect)")
    _model_args(lb)
    lb.add_argument("--site", default="ffn", help="ffn (default), q, k, v, attn, block, or sae (with --sae)")
    _sae_args(lb)
    lb.add_argument("--layers", default="all", metavar="SELECTION", help="all, 5, 0-3, 0,2,5-7")
    lb.add_argument("--broden", metavar="DIR", help="netdissect: a concept dataset in Broden's layout (index.csv, "
                                                    "label.csv, category.csv, c_<category>.csv, images/)")
    lb.add_argument("--classes", action="store_true", help="invert: the probe's images' classes as concepts")
    lb.add_argument("--hierarchy", metavar="imagenet|FILE",
                    help="invert: widen each class by its ancestors: imagenet (WordNet 3.0, shipped) or a JSON "
                         "{class: [parents]} (implies --classes)")
    lb.add_argument("--attributes", metavar="CSV", help="invert: image-level concepts from a table (relative_path, "
                                                        "then one column per category, ';'-separated concepts)")
    lb.add_argument("--clip", metavar="MODEL", help="clip-dissect: an open_clip name/pretrained tag (ViT-B-32/openai) "
                                                    "or demo")
    lb.add_argument("--words", metavar="FILE", help="clip-dissect: the vocabulary, one concept a line (default: the "
                                                    "model's own words for demo, else wordfreq's most frequent English "
                                                    "words)")
    lb.add_argument("--vocabulary", type=int, default=D.VOCABULARY,
                    help=f"clip-dissect: words from wordfreq (default {D.VOCABULARY})")
    lb.add_argument("--k", type=int, default=D.LABEL_K, help=f"concepts kept per unit and source (default {D.LABEL_K})")
    lb.add_argument("--batch-size", type=int, default=D.BATCH_SIZE)
    lb.add_argument("--workers", type=int, help="decoding processes (default: min(8, CPUs))")
    _device_args(lb, precision=False)
    lb.add_argument("--checkpoint-every", type=float, default=D.CHECKPOINT_SECONDS, metavar="SECONDS",
                    help="save netdissect's running counts this often, so a killed pass resumes (default %(default)s)")
    lb.add_argument("--out", required=True, help="the atlas (probed: invert and clip-dissect read its scores)")
    lb.set_defaults(run=cmd_label)

    mp = sub.add_parser("map", help="a map of every probed layer: units placed by their scores on the dataset "
                                       "(UMAP on correlations)")
    mp.add_argument("dir", metavar="ATLAS", help="a probed atlas")
    mp.add_argument("--model", help="only this model (its name in the atlas; default: every probed model)")
    mp.add_argument("--site", help="only this site (default: every probed site)")
    mp.add_argument("--seed", type=int, default=D.SEED, help=f"UMAP's seed (default {D.SEED}; recorded)")
    mp.set_defaults(run=cmd_map)

    a = sub.add_parser("analyze", help="the paper's experiments: token-mixing, foreground-background, "
                                       "frequency, spatial, sites, or all")
    from builder.spec import ANALYSIS_NAMES
    a.add_argument("analysis", help=", ".join(ANALYSIS_NAMES) + " or all")
    _model_args(a)
    a.add_argument("--images", metavar="DIR", help="labelled image folder (accuracy analyses)")
    a.add_argument("--labels", metavar="FILE", help="CSV relative_path,label")
    a.add_argument("--boxes", metavar="FILE", help="bounding boxes: CSV, LOC_val_solution.csv or a folder of XML")
    a.add_argument("--limit", type=int, help="use at most this many labelled images, evenly spaced in path order")
    a.add_argument("--layers", metavar="SELECTION", help="layers for spatial and sites (default: all / first, middle, last)")
    a.add_argument("--units", metavar="SELECTION", help="units for spatial and sites (default: 32 sampled / 0-3)")
    a.add_argument("--threshold", type=float, default=0.5, help="spatial: active patch threshold (default 0.5)")
    a.add_argument("--seed", type=int, default=D.SEED)
    a.add_argument("--batch-size", type=int, default=D.BATCH_SIZE)
    a.add_argument("--workers", type=int)
    _device_args(a, precision=False)
    a.add_argument("--out", required=True, help="atlas folder")
    a.set_defaults(run=cmd_analyze)

    r = sub.add_parser("render", help="render an atlas folder into a static website (DIR/site)")
    r.add_argument("dir", help="atlas folder")
    r.add_argument("--out", help="website folder (default DIR/site)")
    r.add_argument("--site", dest="out", help=argparse.SUPPRESS)   # before the glossary: a site is a unit site
    r.add_argument("--workers", type=int, help="processes (default: min(8, CPUs))")
    r.add_argument("--base-url", default="", help="where the website will be hosted (absolute permalinks)")
    r.add_argument("--images", help="the dataset's image folder, if it moved since the probe")
    r.add_argument("--data-url", default="", metavar="URL",
                   help="where the website's data/ folder (the packs) will be hosted, when apart from the pages "
                        "(a bucket; docs/HOSTING.md); default: beside the pages")
    r.add_argument("--offline", default="auto", choices=("auto", "on", "off"),
                   help="also write the packs as scripts, so the website works opened from disk (file://): "
                        "auto (default) does for atlases up to 512 MB of shards whose data lives beside the pages")
    r.add_argument("--fresh", action="store_true",
                   help="make every pack again (a website received from elsewhere: its record of what it holds is "
                        "its own); default: keep packs whose sources and bytes are unchanged")
    r.add_argument("--live", default="auto", choices=("auto", "on", "off"),
                   help="publish the models' live models (made by `live`, `run` or the demo) for the \"Try an image\" "
                        "view: auto (default) those of at most 200 MB, on every one (an error for a model without "
                        "one), off none")
    r.set_defaults(run=cmd_render)

    li = sub.add_parser("live", help="the model in ONNX for the website's \"Try an image\" view, checked "
                                     "against PyTorch")
    _model_args(li)
    _sae_args(li)
    li.add_argument("--storage", default="auto", choices=("auto", "fp32", "fp16"),
                    help="the weights' storage (computing is fp32 either way): auto (default) fp32 up to 32 MB of "
                         "weights, fp16 above")
    li.add_argument("--images", metavar="DIR", help="images to check it on (default: the atlas's dataset)")
    li.add_argument("--out", required=True, help="the atlas (its units are the live model's outputs)")
    li.set_defaults(run=cmd_live, layers=None, site="ffn")

    sv = sub.add_parser("serve", help="serve an atlas's website on localhost for preview")
    sv.add_argument("dir", help="atlas folder")
    sv.add_argument("--port", type=int, default=8000)
    sv.set_defaults(run=cmd_serve)

    ru = sub.add_parser("run", help="build everything a TOML spec asks for (this process's share of it)")
    ru.add_argument("spec", help="build spec (TOML; see examples/)")
    pl = sub.add_parser("plan", help="print the work of a spec: shards, units, FLOPs, hours on this device")
    pl.add_argument("spec", help="build spec (TOML)")
    pl.add_argument("--no-calibrate", action="store_true", help="skip the short measured calibration")
    for p_ in (ru, pl):
        p_.add_argument("--share-index", type=int, help="this process's share of the build (0-based); else Slurm or "
                                                       "torchrun tell")
        p_.add_argument("--num-shares", type=int, help="number of shares the build is split into")
        # hidden aliases: a share is not a shard
        p_.add_argument("--shard-index", dest="share_index", type=int, help=argparse.SUPPRESS)  # before the glossary
        p_.add_argument("--num-shards", dest="num_shares", type=int, help=argparse.SUPPRESS)   # before the glossary
    ru.set_defaults(run=cmd_run)
    pl.set_defaults(run=cmd_plan)
    fi = sub.add_parser("finalize", help="probe, analyses, manifest and website once every shard exists")
    fi.add_argument("dir", help="atlas folder built with `run`")
    fi.set_defaults(run=cmd_finalize)
    ex = sub.add_parser("export", help="write the atlas as Parquet tables with a Hugging Face dataset card")
    ex.add_argument("dir", help="atlas folder")
    ex.add_argument("--format", default="parquet", help="parquet (the only format so far)")
    ex.add_argument("--out", required=True, help="output folder (new, empty, or an earlier export)")
    ex.add_argument("--max-file-mb", type=float, default=256, help="largest Parquet file, in MiB (default 256)")
    ex.set_defaults(run=cmd_export)
    ve = sub.add_parser("verify", help="check an atlas against its manifest: files, schema, values, coverage")
    ve.add_argument("dir", help="atlas folder")
    ve.set_defaults(run=cmd_verify)

    d = sub.add_parser("demo", help="build the offline demo atlas (what `python build.py` does)")
    d.add_argument("--out", default="atlas-demo", help="atlas folder (default ./atlas-demo)")
    d.set_defaults(run=cmd_demo)

    m = sub.add_parser("make-dataset", help="generate the demo's shapes dataset (ImageFolder + boxes.csv)")
    m.add_argument("--out", required=True)
    m.add_argument("--n", type=int, default=D.DEMO_IMAGES, help=f"number of images (default {D.DEMO_IMAGES})")
    m.add_argument("--seed", type=int, default=D.DEMO_SEED, help=f"seed (default {D.DEMO_SEED}: the demo's dataset)")
    m.add_argument("--concepts", metavar="DIR", help="also write a concept dataset in Broden's layout there (each "
                   "image's shape, distractor, colour and texture masks) and attributes.csv beside the images")
    m.add_argument("--concept-images", type=int, metavar="N", help="only the first N images in the concept dataset "
                   "(default all)")
    m.set_defaults(run=cmd_make_dataset)

    t = sub.add_parser("train-demo", help="train the demo ViT and CNN on generated shapes (CPU)")
    t.add_argument("--out", default=None, help="weights folder (default: builder/demo/weights, the committed ones)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, help="epochs for every model (default: each model's own, recorded in "
                   "demo_weights.json)")
    t.add_argument("--n-train", type=int, default=40000, help="generated training images (default 40000)")
    t.add_argument("--models", default="vit,cnn,clip", help="any of vit, cnn, clip (the image-text model of the demo's "
                                                           "open-vocabulary labels), comma-separated")
    t.add_argument("--robust-epochs", type=int, metavar="N", help="add a robust phase of N epochs to the ViT's "
                   "training (L2 PGD on augmented images; default none, as the shipped ViT)")
    t.add_argument("--vit-from", metavar="FILE", help="start the ViT's robust phase from these weights (a "
                   "state dict of vit_atlas_demo) instead of training its standard phase first")
    t.set_defaults(run=cmd_train_demo)
    return p


def _close_progress_bars() -> None:
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


def program(argv0: str | None = None) -> str:
    """How the user ran ViT Atlas, as messages should name it: ``python build.py`` from a checkout,
    ``python -m builder``, else the installed command (``vit-atlas``)."""
    path = Path(argv0 if argv0 is not None else sys.argv[0])
    if path.name == "build.py":
        return "python build.py"
    if path.name == "__main__.py" and path.parent.name == "builder":
        return "python -m builder"
    return "vit-atlas"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command line; returns the exit status. ``prog``: how the user ran it (default: from
    ``sys.argv[0]``), which every message and the build history name."""
    argv = sys.argv[1:] if argv is None else argv
    prog = prog or program()
    set_program(prog)
    args = parser(prog).parse_args(argv)
    command = f"{prog} {shlex.join(argv)}".rstrip()
    try:
        try:
            if args.command is None:  # the default: the demo atlas
                args = parser(prog).parse_args(["demo"])
            args.run(args, command)
        except BaseException:
            _close_progress_bars()    # so that the one line below starts a line of its own
            raise
    except AtlasError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume where it stopped", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno == errno.ENOSPC or "No space left on device" in str(e):
            where = f" ({e.filename})" if e.filename else ""
            print(f"error: no space left on the device{where}: free some space and run the same command again "
                  "(finished work is kept; files being written were left out)", file=sys.stderr)
            return 2
        if e.filename is None:
            raise
        where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
        print(f"error: {e.strerror or e}: {where} (check the path, its permissions and free space)", file=sys.stderr)
        return 2
    except Exception:
        import traceback
        traceback.print_exc()
        print("internal error: the traceback above is a bug in ViT Atlas, not a problem with your input; "
              "please report it with the command you ran", file=sys.stderr)
        return 1
    return 0
