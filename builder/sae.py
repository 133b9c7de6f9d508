"""Sparse-autoencoder latents as units: the checkpoints people publish, read without running their code,
and each one's inference encoder as its library computes it.

Formats (detected from the files, or named with ``--sae-format``):

    saelens  a folder with ``cfg.json`` and ``sae_weights.safetensors`` (SAELens's ``save_model`` of a
             training SAE, or ``save_inference_model``; ViT-Prisma's newer tooling): ``W_enc`` [d_in, d_sae],
             ``b_enc``, ``W_dec`` [d_sae, d_in], ``b_dec``, and ``threshold`` (jumprelu) or ``topk_threshold``
             (a batchtopk training SAE); hook in ``metadata.hook_name`` (6.x) or flat ``hook_name`` (before)
    prisma   ViT-Prisma: ``config.json`` and a state dict ``.pt`` (newer releases pickle their config class
             inside the ``.pt``, which then needs no config.json); ``b_dec`` is always subtracted
    saev     saev: one ``sae.pt``, a JSON header line, then a state dict; patch tokens only; the input is
             ``x - b_dec`` for releases before header schema 2, ``x`` from schema 2 on; a release of many
             (``manifest.jsonl`` with ``layer_<N>/<run>/sae.pt``) is read one run at a time

The encoder, for every format (``SAE.formula`` says it for one SAE):

    x'  = norm(x) − b_dec            (norm: none, layer_norm or constant_norm_rescale; b_dec when the format says)
    h   = (x' W_enc + b_enc) · ‖W_dec[i]‖   (the scale only where SAELens's rescale_acts_by_decoder_norm is on)
    f   = relu(h) | relu(h)·[h > θ] | topk_k(h)   (topk: the k largest of each token kept, after a ReLU for
          SAELens and ViT-Prisma, as they are for saev)

Batch top-k SAEs have no per-image encoder while they train (their top-k runs over a batch); both
libraries define their inference form as the JumpReLU above at the threshold they learned (SAELens's
``topk_threshold``, saev's ``activation.threshold``; saev: a ReLU when that threshold is not positive),
which is what is read. A batch top-k checkpoint without its threshold, gated SAEs, transcoders and any
other architecture are refused by name, never approximated. Optimization maximizes a latent's ``h``
(its output has no gradient where it is zero); what is stored is always the latent's value ``f``.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from atlas.format import SAE_SITE, AtlasError

from .checkpoints import (JSON_CAP, Record, load_bytes_after_header, pickled_names, read_header_line, read_json,
                          safe_torch_load)

SAE_FORMATS = ("saelens", "prisma", "saev")
LIBRARIES = {"saelens": "SAELens", "prisma": "ViT-Prisma", "saev": "saev"}
HOOKS = {"hook_resid_post": "resid_post", "hook_mlp_out": "mlp_out"}   # names SAE releases use -> ours
ACTIVATIONS = ("relu", "jumprelu", "topk")
NORMALIZATIONS = ("none", "layer_norm", "constant_norm_rescale")
SAEV_MANIFEST = "manifest.jsonl"       # a saev release of many checkpoints: one JSON line per run
MAX_LATENTS = 2**24
MAX_LAYER = 10**4


@dataclass(eq=False)
class SAE:
    """One sparse autoencoder over one hook of one block, ready to encode (fp32, on CPU until moved)."""
    name: str                    # the unit site is "sae-<name>"
    format: str                  # one of SAE_FORMATS
    sha256: str                  # of the checkpoint's files, in order: its identity in the atlas
    W_enc: torch.Tensor          # [d_in, d_sae]
    b_enc: torch.Tensor          # [d_sae]
    W_dec: torch.Tensor          # [d_sae, d_in]
    b_dec: torch.Tensor          # [d_in]
    activation: str = "relu"     # one of ACTIVATIONS
    k: int | None = None         # topk
    topk_relu: bool = True       # a ReLU on the k kept values (SAELens, ViT-Prisma) or none (saev)
    threshold: torch.Tensor | None = None   # jumprelu: θ per latent (a batch top-k's one θ, repeated)
    rescale: bool = False        # h scaled by each latent's decoder-row norm (SAELens rescale_acts_by_decoder_norm)
    subtract_b_dec: bool = True  # x - b_dec before the encoder
    normalize: str = "none"      # one of NORMALIZATIONS, per token
    hook: str = "resid_post"     # "resid_post": the output of blocks[l]; "mlp_out": blocks[l].ls2's output
    layer: int | None = None     # the block, when the checkpoint (or its release's manifest) says
    tokens: str = "all"          # what it was trained on: "all", "patches" or "cls"
    files: list = field(default_factory=list)   # the checkpoint's file names
    architecture: str = ""       # as the checkpoint names it (SAELens "batchtopk", saev "BatchTopK", ...)
    version: str | None = None   # the library's version, or saev's header schema, as the checkpoint records it
    run: str | None = None       # the run of a release of many (saev's manifest.jsonl)

    @property
    def site(self) -> str:
        """The unit site of its latents."""
        return f"sae-{self.name}"

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def library(self) -> str:
        return LIBRARIES[self.format]

    def to(self, device) -> "SAE":
        """The same SAE with its tensors on ``device``."""
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        self.__dict__.pop("_scale", None)
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input: ``x`` (fp32, [..., d_in]) normalized per token, minus ``b_dec`` when it says."""
        x = x.float()
        if self.W_enc.device != x.device:       # follows the model to its device
            self.to(x.device)
        if self.normalize == "layer_norm":           # SAELens's run-time layer norm: unbiased std, eps on std
            x = x - x.mean(dim=-1, keepdim=True)
            x = x / (x.std(dim=-1, keepdim=True) + 1e-5)
        elif self.normalize == "constant_norm_rescale":
            x = x * (self.d_in ** 0.5) / x.norm(dim=-1, keepdim=True)
        return x - self.b_dec if self.subtract_b_dec else x

    @property
    def scale(self) -> torch.Tensor | None:
        """Each latent's decoder-row norm when ``rescale`` (what h is multiplied by), else None."""
        if not self.rescale:
            return None
        if "_scale" not in self.__dict__:
            self.__dict__["_scale"] = self.W_dec.norm(dim=-1)
        return self.__dict__["_scale"]

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """``h`` of every latent, [..., d_sae]."""
        h = self.prepare(x) @ self.W_enc + self.b_enc
        return h * self.scale if self.rescale else h

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latents' values, [..., d_sae]."""
        h = self.pre(x)
        if self.activation == "relu":
            return torch.relu(h)
        if self.activation == "jumprelu":
            return torch.relu(h) * (h > self.threshold)
        top = torch.topk(h, self.k, dim=-1)
        values = torch.relu(top.values) if self.topk_relu else top.values
        return torch.zeros_like(h).scatter_(-1, top.indices, values)

    def unit_pre(self, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """Each image's own latent's ``h``: x [B, ..., d_in], units long [B] -> [B, ...]; one column of the
        encoder per image, not all d_sae (what one optimization step needs)."""
        prepared = self.prepare(x)
        columns = self.W_enc.t()[units]                                   # [B, d_in]
        shape = (prepared.shape[0],) + (1,) * (prepared.dim() - 2) + (-1,)
        h = (prepared * columns.view(shape)).sum(-1) + self.b_enc[units].view(shape[:-1])
        return h * self.scale[units].view(shape[:-1]) if self.rescale else h

    def formula(self) -> str:
        """The encoder this SAE computes, in one line (what the atlas records and the unit view shows)."""
        x = {"none": "x", "layer_norm": "layer_norm(x)", "constant_norm_rescale": "√d·x/‖x‖"}[self.normalize]
        x = f"({x} − b_dec)" if self.subtract_b_dec else x
        h = f"({x}·W_enc + b_enc)·‖W_dec[i]‖" if self.rescale else f"{x}·W_enc + b_enc"
        if self.activation == "relu":
            f = "relu(h)"
        elif self.activation == "jumprelu":
            f = "relu(h)·[h > θ]" + (" (one θ)" if self.threshold is not None and bool(
                (self.threshold == self.threshold.reshape(-1)[0]).all()) else " (θ per latent)")
        else:
            f = f"top-{self.k} of h per token" + (", relu" if self.topk_relu else ", as they are")
        return f"h = {h}; f = {f}"

    def record(self) -> dict:
        """What the atlas records of it (every shard of its site carries it): identity, which library's
        convention produced the latents, and the encoder used."""
        one = self.threshold is not None and bool((self.threshold == self.threshold.reshape(-1)[0]).all())
        return {"name": self.name, "format": self.format, "library": self.library, "version": self.version,
                "architecture": self.architecture, "run": self.run, "sha256": self.sha256, "files": self.files,
                "d_in": self.d_in, "d_sae": self.d_sae, "activation": self.activation, "k": self.k,
                "topk_relu": self.topk_relu, "rescale": self.rescale,
                "threshold": float(self.threshold.reshape(-1)[0]) if one else ("per latent" if self.threshold
                                                                                 is not None else None),
                "subtract_b_dec": self.subtract_b_dec, "normalize": self.normalize, "hook": self.hook,
                "layer": self.layer, "tokens": self.tokens, "encoder": self.formula()}


# -- finding the checkpoint -------------------------------------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint to read: where, in which format, and what a release's manifest said of it."""
    path: Path                   # a SAELens folder, or a file
    format: str
    layer: int | None = None     # from a saev release's manifest
    run: str | None = None


def find_checkpoint(path: Path, format: str | None = None, run: str | None = None,
                    layer: int | None = None) -> Checkpoint:
    """The one checkpoint ``path`` names: a file; a folder holding exactly one (SAELens's, a single saev
    ``sae.pt``, a ViT-Prisma config.json with one state dict); or a release of many, resolved by its own
    manifest with ``run`` (a run id) or ``layer`` (the block, when one run has it). Anything ambiguous is
    refused with the choices."""
    if path.is_file():
        fmt = format or detect_format(path)
        release = _release_entry(path) if fmt == "saev" else None
        return Checkpoint(path, fmt, *(release or (None, None)))
    if (path / SAEV_MANIFEST).is_file() and format in (None, "saev"):
        return _from_release(path, run, layer)
    if run is not None:
        raise AtlasError(f"--sae-run {run}: {path} is not a release of many checkpoints (no {SAEV_MANIFEST})")
    fmt = format or detect_format(path)
    if fmt == "saelens":
        return Checkpoint(path, fmt)
    if fmt == "saev":
        if not (path / "sae.pt").is_file():
            raise AtlasError(f"--sae {path}: no sae.pt in it; name the saev checkpoint file")
        return Checkpoint(path / "sae.pt", fmt)
    states = sorted(p for p in path.glob("*.pt") if not p.name.endswith("_log_feature_sparsity.pt"))
    if len(states) != 1:
        runs = sorted(states, key=_images_seen)
        last = f" (the last of a training run: {runs[-1].name})" if runs and _images_seen(runs[-1]) >= 0 else ""
        raise AtlasError(f"--sae {path} holds {len(states)} checkpoints ({', '.join(p.name for p in runs[:6])}"
                         f"{', ...' if len(runs) > 6 else ''}): name one file{last}" if states else
                         f"--sae {path}: holds no .pt state dict")
    return Checkpoint(states[0], fmt)


def _images_seen(path: Path) -> int:
    """How far into its training run a ViT-Prisma checkpoint ``n_images_<N>.pt`` is; -1 for other names."""
    m = re.fullmatch(r"n_images_(\d+)\.pt", path.name)
    return int(m[1]) if m else -1


def detect_format(path: Path) -> str:
    """The format of the checkpoint at ``path`` (a folder or a file), from its files alone (a ``.pt``'s
    pickled names are read, never unpickled)."""
    if path.is_dir():
        if (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file():
            return "saelens"
        if (path / "sae.pt").is_file() or (path / SAEV_MANIFEST).is_file():
            return "saev"
        if (path / "config.json").is_file() and any(path.glob("*.pt")) or any(
                b"vit_prisma" in pickled_names(p) for p in sorted(path.glob("*.pt"))[:8]):
            return "prisma"
    elif path.is_file():
        with open(path, "rb") as f:
            head = f.read(1)
        if head == b"{":
            return "saev"
        names = pickled_names(path)
        if path.suffix == ".pt" and ((path.parent / "config.json").is_file() or b"vit_prisma" in names):
            return "prisma"
        if b"W_enc" in names:
            raise AtlasError(f"{path}: a state dict without its configuration (a ViT-Prisma .pt needs its config.json "
                             "beside it); put the config next to it, or name its format with --sae-format")
    raise AtlasError(f"{path}: not an SAE checkpoint this version reads (a SAELens folder with cfg.json and "
                     "sae_weights.safetensors, a ViT-Prisma config.json with a .pt state dict or a .pt holding its "
                     "config, a saev sae.pt or a saev release with manifest.jsonl); name its format with --sae-format "
                     "if it is one of those")


def _manifest(root: Path) -> list[dict]:
    """A saev release's manifest.jsonl: one object per run with a plain relative ``path``, a ``layer``
    and a ``sha256`` (lines that are not are refused: it is the release's own record)."""
    try:
        with open(root / SAEV_MANIFEST, "rb") as f:
            text = f.read(64 * JSON_CAP + 1)
    except OSError as e:
        raise AtlasError(f"{root / SAEV_MANIFEST}: cannot be read ({e.strerror})") from None
    entries = []
    for i, line in enumerate(text.decode("utf-8", "replace").splitlines()):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) \
                or not re.fullmatch(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*", entry["path"]) \
                or ".." in entry["path"].split("/") or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256"))):
            raise AtlasError(f"{root / SAEV_MANIFEST}: line {i + 1} is not a run (path, layer, sha256)")
        entry["layer"] = _whole(entry.get("layer"), f"{SAEV_MANIFEST} line {i + 1} layer", 0, MAX_LAYER)
        entries.append(entry)
    return entries


def _choices(entries: list[dict]) -> str:
    shown = [f"{e.get('run_id', e['path'])} (layer {e['layer']}" + (f", L0 {e['l0']}" if "l0" in e else "") + ")"
             for e in entries[:12]]
    return ", ".join(shown) + (f", ... ({len(entries)} runs)" if len(entries) > 12 else "")


def _from_release(root: Path, run: str | None, layer: int | None) -> Checkpoint:
    entries = _manifest(root)
    if run is not None:
        chosen = [e for e in entries if e.get("run_id") == run]
        if not chosen:
            raise AtlasError(f"--sae-run {run}: {root} has no such run; its runs: {_choices(entries)}")
    elif layer is not None:
        chosen = [e for e in entries if e["layer"] == layer]
        if len(chosen) != 1:
            raise AtlasError(f"--sae {root} has {len(chosen)} runs on layer {layer}: pass --sae-run with one of "
                             f"{_choices(chosen or entries)}")
    else:
        raise AtlasError(f"--sae {root} is a release of {len(entries)} checkpoints: pass --sae-run RUN (or --layers N "
                         f"when one run has that layer); its runs: {_choices(entries)}")
    entry = chosen[0]
    file = root / entry["path"]
    if not file.is_file():
        raise AtlasError(f"{root / SAEV_MANIFEST} names {entry['path']}, which is not there (download it)")
    if _digest([file]) != entry["sha256"]:
        raise AtlasError(f"{file}: its sha256 is not the one {SAEV_MANIFEST} records (a damaged or changed download)")
    return Checkpoint(file, "saev", entry["layer"], str(entry.get("run_id") or file.parent.name))


def _release_entry(file: Path) -> tuple[int, str] | None:
    """(layer, run) of a saev file inside a release whose manifest lists it (checked by sha256), else None."""
    for root in list(file.parents)[1:4]:
        if (root / SAEV_MANIFEST).is_file():
            rel = file.relative_to(root).as_posix()
            for entry in _manifest(root):
                if entry["path"] == rel:
                    if _digest([file]) != entry["sha256"]:
                        raise AtlasError(f"{file}: its sha256 is not the one {root / SAEV_MANIFEST} records")
                    return entry["layer"], str(entry.get("run_id") or file.parent.name)
    return None


# -- reading ---------------------------------------------------------------------------------------

def load_sae(path: str | Path, format: str | None = None, name: str | None = None, run: str | None = None,
             layer: int | None = None) -> SAE:
    """The SAE at ``path`` in ``format`` (detected when None), named ``name`` (default: from the path);
    ``run`` or ``layer`` pick one checkpoint of a release of many. AtlasError, naming the file and what
    to do, for anything it cannot read or refuses."""
    path = Path(path)
    if not path.exists():
        raise AtlasError(f"--sae {path}: no such file or folder")
    if format is not None and format not in SAE_FORMATS:
        raise AtlasError(f"--sae-format {format!r}: formats are {', '.join(SAE_FORMATS)}")
    found = find_checkpoint(path, format, run, layer)
    name = name or (re.sub(r"[^a-z0-9_-]+", "-", found.run.lower()).strip("-_") if found.run else sae_name(path))
    if not SAE_SITE.fullmatch(f"sae-{name}"):
        raise AtlasError(f"--sae-name {name!r}: use lowercase letters, digits, '_' and '-' (it names the unit site)")
    reader = {"saelens": _read_saelens, "prisma": _read_prisma, "saev": _read_saev}[found.format]
    from safetensors import SafetensorError
    try:
        sae = reader(found.path, name)
    except AtlasError as e:               # say which checkpoint, once
        raise (e if str(path) in str(e) else AtlasError(f"--sae {path}: {e}")) from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError, RuntimeError, SafetensorError,
            OverflowError) as e:
        raise AtlasError(f"--sae {path}: not a readable {found.format} checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    if found.layer is not None:
        if sae.layer is not None and sae.layer != found.layer:
            raise AtlasError(f"--sae {path}: its configuration says block {sae.layer}, its release's manifest {found.layer}")
        sae.layer, sae.run = found.layer, found.run
    _check(sae, path)
    return sae


def sae_name(path: Path) -> str:
    """An SAE's default name, from its path: the file's stem (but not a generic sae.pt or weights.pt's),
    else its folder's name, in lowercase letters, digits, '_' and '-'."""
    text = (path.stem if path.stem not in ("sae", "weights") else path.parent.name) if path.is_file() else path.name
    slug = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    return slug or "sae"


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _whole(value, what: str, lo: int, hi: int) -> int:
    """``value`` as a whole number in [lo, hi] (an int, or a float with no fraction: some tools write 32.0);
    AtlasError otherwise (1.5, true, Infinity, 1e400 and strings are not a k)."""
    ok = isinstance(value, int) and not isinstance(value, bool) or \
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    if not ok or not lo <= value <= hi:
        raise AtlasError(f"the SAE's {what} is {str(value)[:40]!r}, not a whole number from {lo} to {hi}")
    return int(value)


def _flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise AtlasError(f"the SAE's {what} is {str(value)[:40]!r}, not true or false")
    return value


def _hook_and_layer(hook_name) -> tuple[str, int | None]:
    """``blocks.{l}.hook_resid_post`` -> ("resid_post", l); refuses hooks this version cannot read."""
    if not hook_name:
        return "resid_post", None
    m = re.fullmatch(r"blocks\.(\d{1,4})\.(hook_\w+)", str(hook_name))
    if not m or m[2] not in HOOKS:
        raise AtlasError(f"hook {str(hook_name)[:80]!r}: ViT Atlas reads SAEs on blocks.<l>.hook_resid_post (the output "
                         "of timm's blocks[l]) or blocks.<l>.hook_mlp_out (blocks[l].ls2(mlp(norm2(x))))")
    return HOOKS[m[2]], int(m[1])


def _tensors(state: dict, keys=("W_enc", "b_enc", "W_dec", "b_dec")) -> list[torch.Tensor]:
    if not isinstance(state, dict):
        raise AtlasError("the checkpoint holds no state dict")
    missing = [k for k in keys if k not in state]
    if missing:
        raise AtlasError(f"the state dict lacks {missing} (has {sorted(map(str, state))[:8]})")
    return [_real(state[k], k) for k in keys]


def _real(t, name: str) -> torch.Tensor:
    """A tensor of real floating numbers, as fp32; AtlasError for anything else (complex, integer, not a tensor)."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.is_complex():
        raise AtlasError(f"the SAE's {name} is {getattr(t, 'dtype', type(t).__name__)}, not a tensor of real numbers")
    return t.detach().float().contiguous()


def _normalize(value) -> str:
    value = "none" if value in (None, False) else str(value)
    if value not in NORMALIZATIONS:
        raise AtlasError(f"normalize_activations {value[:40]!r}: ViT Atlas reads {', '.join(NORMALIZATIONS)} (fold a "
                         "dataset-wide scaling factor into W_enc and b_dec first)")
    return value


def _tokens(cfg: dict) -> str:
    if cfg.get("cls_token_only"):
        return "cls"
    return "patches" if cfg.get("use_patches_only") else "all"


def _read_saelens(path: Path, name: str) -> SAE:
    from safetensors.torch import load_file
    cfg = read_json(path / "cfg.json", "SAELens config")
    state = load_file(str(path / "sae_weights.safetensors"))
    meta = cfg.get("metadata") or cfg.get("meta") or {}
    if not isinstance(meta, dict):
        raise AtlasError("its metadata is not an object")
    hook, layer = _hook_and_layer(meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point"))
    hook_layer = meta.get("hook_layer") if meta.get("hook_layer") is not None else cfg.get("hook_layer")
    if layer is None and hook_layer is not None:
        layer = _whole(hook_layer, "hook_layer", 0, MAX_LAYER)
    if cfg.get("reshape_activations", "none") != "none":
        raise AtlasError(f"reshape_activations {cfg['reshape_activations']!r} (attention-head SAEs): not read")
    arch = str(cfg.get("architecture") or "standard").lower()
    fn = str(cfg.get("activation_fn_str") or "relu").lower()             # before 6.0: topk as an activation
    if arch == "standard" and fn == "topk":
        arch = "topk"
    W_enc, b_enc, W_dec, b_dec = _tensors(state)
    rescale = _flag(cfg.get("rescale_acts_by_decoder_norm", False), "rescale_acts_by_decoder_norm")
    k, threshold = None, None
    if arch == "standard":
        activation = "relu"
        rescale = False                       # only SAELens's topk family reads this flag
    elif arch == "jumprelu":
        activation, threshold, rescale = "jumprelu", _threshold(state), False
    elif arch == "topk":
        activation = "topk"
        k = _whole(cfg["k"] if "k" in cfg else (cfg.get("activation_fn_kwargs") or {}).get("k"), "k", 1, MAX_LATENTS)
    elif arch in ("batchtopk", "matryoshka_batchtopk"):
        if "topk_threshold" not in state:
            raise AtlasError(f"a SAELens {arch} checkpoint without its topk_threshold: its top-k runs over a batch, so it "
                             "has no per-image encoder (save it with save_inference_model, which writes a jumprelu)")
        theta = _real(state["topk_threshold"], "topk_threshold").reshape(-1)
        if theta.numel() != 1:
            raise AtlasError("its topk_threshold is not one number")
        activation, threshold = "jumprelu", theta.expand(W_enc.shape[1]).clone()
    else:
        raise AtlasError(f"SAELens architecture {arch!r}: ViT Atlas reads standard, jumprelu, topk, batchtopk and "
                         "matryoshka_batchtopk SAEs (gated SAEs and transcoders are not read)")
    version = meta.get("sae_lens_version") or meta.get("sae_lens_training_version") or cfg.get("sae_lens_version") \
        or cfg.get("sae_lens_training_version")
    files = [path / "cfg.json", path / "sae_weights.safetensors"]
    return SAE(name, "saelens", _digest(files), W_enc, b_enc, W_dec, b_dec, activation, k, True, threshold, rescale,
               _flag(cfg.get("apply_b_dec_to_input", True), "apply_b_dec_to_input"),
               _normalize(cfg.get("normalize_activations")), hook, layer, _tokens({**meta, **cfg}),
               [f.name for f in files], arch, str(version) if version else None)


def _threshold(state: dict) -> torch.Tensor:
    if "threshold" in state:
        return _real(state["threshold"], "threshold")
    if "log_threshold" in state:
        return _real(state["log_threshold"], "log_threshold").exp()
    raise AtlasError("a jumprelu SAE without its threshold")


def _read_prisma(weights: Path, name: str) -> SAE:
    folder = weights.parent
    loaded = safe_torch_load(weights)
    cfg = read_json(folder / "config.json", "ViT-Prisma config") if (folder / "config.json").is_file() else {}
    state = loaded
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        state = loaded["state_dict"]
        for value in loaded.values():                 # a pickled config class, read as its fields
            if isinstance(value, Record) and not cfg:
                cfg = value.fields()
    if not cfg:
        raise AtlasError(f"{weights}: no configuration (neither a config.json beside it nor one pickled inside)")
    layer_index = cfg.get("hook_point_layer")
    hook_name = cfg.get("hook_point") or (
        f"blocks.{_whole(layer_index, 'hook_point_layer', 0, MAX_LAYER)}.{cfg.get('layer_subtype', 'hook_resid_post')}"
        if layer_index is not None else None)
    hook, layer = _hook_and_layer(hook_name)
    arch = str(cfg.get("architecture") or "standard").lower()
    fn = str(cfg.get("activation_fn_str") or "relu").lower()
    if arch != "standard" or fn not in ("relu", "topk"):
        raise AtlasError(f"ViT-Prisma architecture {arch!r} with activation {fn!r}: ViT Atlas reads standard SAEs "
                         "with relu or topk (gated and jumprelu are not read)")
    k = _whole((cfg.get("activation_fn_kwargs") or {}).get("k"), "k", 1, MAX_LATENTS) if fn == "topk" else None
    W_enc, b_enc, W_dec, b_dec = _tensors(state)
    files = [f for f in (folder / "config.json", weights) if f.is_file()]
    return SAE(name, "prisma", _digest(files), W_enc, b_enc, W_dec, b_dec, "topk" if k else "relu", k, True, None,
               False, True, _normalize(cfg.get("normalize_activations")), hook, layer, _tokens(cfg),
               [f.name for f in files], f"{arch}/{fn}", None)


def _read_saev(file: Path, name: str) -> SAE:
    with open(file, "rb") as f:
        header = read_header_line(f, str(file))
        state = safe_torch_load(load_bytes_after_header(f, str(file)), file)
    schema = header.get("schema")
    if schema is not None:
        schema = _whole(schema, "header schema", 1, 10**3)
    cfg = header.get("cfg", header) if schema is not None else header
    if not isinstance(cfg, dict):
        raise AtlasError("its header's cfg is not an object")
    activation_cfg = cfg.get("activation") if isinstance(cfg.get("activation"), dict) else \
        {"cls": header.get("cls", "Relu"), "params": {"top_k": cfg.get("top_k")}}
    cls = activation_cfg.get("cls", "Relu")
    params = activation_cfg.get("params") or {}
    if not isinstance(params, dict):
        raise AtlasError("its activation's params are not an object")
    W_enc, b_enc, W_dec, b_dec = _tensors(state)
    k, threshold = None, None
    if cls == "Relu":
        activation = "relu"
    elif cls == "TopK":
        activation = "topk"
        k = min(_whole(params.get("top_k", 32), "top_k", 1, MAX_LATENTS), W_enc.shape[-1])   # saev: min(top_k, d_sae)
    elif cls == "BatchTopK":
        if "activation.threshold" not in state:
            raise AtlasError("a saev BatchTopK checkpoint from before its inference threshold (saev, November 2025): its "
                             "top-k runs over a batch, so it has no per-image encoder; a newer saev release has one")
        theta = _real(state["activation.threshold"], "activation.threshold").reshape(-1)
        if theta.numel() != 1:
            raise AtlasError("its activation.threshold is not one number")
        activation, threshold = "jumprelu", theta.expand(W_enc.shape[-1]).clone()   # relu(h)·[h > θ]: a ReLU for θ <= 0
    else:
        raise AtlasError(f"saev activation {str(cls)[:40]!r}: ViT Atlas reads Relu, TopK and BatchTopK (with its "
                         "inference threshold)")
    version = f"schema {schema}" if schema is not None else "before schema"
    if header.get("lib"):
        version += f", saev {str(header['lib'])[:40]}"
    # saev encodes x from header schema 2 on; releases before it were trained on x - b_dec
    return SAE(name, "saev", _digest([file]), W_enc, b_enc, W_dec, b_dec, activation, k, False, threshold, False,
               not (schema is not None and schema >= 2), "none", "resid_post", None, "patches", [file.name], str(cls),
               version)


def _check(sae: SAE, path: Path) -> None:
    if sae.W_enc.dim() != 2 or 0 in sae.W_enc.shape or sae.d_sae > MAX_LATENTS:
        raise AtlasError(f"--sae {path}: W_enc has shape {tuple(sae.W_enc.shape)}, not [d_in, d_sae] with "
                         f"1 to {MAX_LATENTS:,} latents")
    d_in, d_sae = sae.W_enc.shape
    shapes = {"b_enc": (sae.b_enc.shape, (d_sae,)), "W_dec": (sae.W_dec.shape, (d_sae, d_in)),
              "b_dec": (sae.b_dec.shape, (d_in,))}
    if sae.threshold is not None:
        shapes["threshold"] = (sae.threshold.shape, (d_sae,))
    bad = [f"{k} {tuple(have)} (expected {want})" for k, (have, want) in shapes.items() if tuple(have) != want]
    if sae.activation == "jumprelu" and sae.threshold is None:
        bad.append("no threshold for its jumprelu")
    if sae.activation == "topk" and not 0 < (sae.k or 0) <= d_sae:
        bad.append(f"k={sae.k} for {d_sae} latents")
    if bad:
        raise AtlasError(f"--sae {path}: W_enc is {d_in}x{d_sae} but " + "; ".join(bad))
    used = [sae.W_enc, sae.b_enc, sae.b_dec] + ([sae.W_dec] if sae.rescale else []) + \
        ([sae.threshold] if sae.threshold is not None else [])
    if not all(torch.isfinite(t).all() for t in used):
        raise AtlasError(f"--sae {path}: NaN or inf in the weights its encoder uses")
