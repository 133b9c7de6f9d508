"""Sparse-autoencoder latents as units: the checkpoints people publish, read without running their code,
and each one's encoder exactly as its configuration says.

Formats (detected from the files, or named with ``--sae-format``):

    saelens  a folder with ``cfg.json`` and ``sae_weights.safetensors`` (SAELens; ViT-Prisma's newer
             tooling): ``W_enc`` [d_in, d_sae], ``b_enc``, ``W_dec`` [d_sae, d_in], ``b_dec``, ``threshold``
             (jumprelu); architecture standard / jumprelu / topk; hook in ``metadata.hook_name`` (6.x),
             ``meta.hook_name``, or flat ``hook_name``/``hook_point`` (before 6.0)
    prisma   ViT-Prisma: ``config.json`` and a state dict ``.pt`` (newer releases pickle their config
             class inside ``weights.pt``); ``b_dec`` is always subtracted from the input
    saev     saev: one ``sae.pt``, a JSON header line, then a state dict; patch tokens only; the
             input is ``x - b_dec`` for releases before header schema 2, ``x`` from schema 2 on

Encoder (every format): ``x' = norm(x) - b_dec`` (when the format subtracts it), ``pre = x' W_enc + b_enc``,
then relu / jumprelu ``relu(pre)·[pre > θ]`` / topk (the k largest pre-activations of each token kept,
after a ReLU for SAELens and ViT-Prisma, as they are for saev). Optimization maximizes a latent's
pre-activation (its output has no gradient where it is zero); what is stored is always the latent's value.

Pickled checkpoints are read by torch's weights-only unpickler. A ViT-Prisma config class inside one
becomes an inert record of its fields (``_Record``): nothing in the file is imported or called. Any other
class or function a pickle names (``os.system``, ``builtins.eval``, ...) refuses the file.
"""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from atlas.format import SAE_SITE, AtlasError

SAE_FORMATS = ("saelens", "prisma", "saev")
HOOKS = {"hook_resid_post": "resid_post", "hook_mlp_out": "mlp_out"}   # names SAE releases use -> ours
ACTIVATIONS = ("relu", "jumprelu", "topk")
NORMALIZATIONS = ("none", "layer_norm", "constant_norm_rescale")
# Pickled classes a ViT-Prisma checkpoint may carry (its config); each is read as an inert record.
RECORD_MODULES = ("vit_prisma.",)


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
    threshold: torch.Tensor | None = None   # jumprelu: θ per latent
    subtract_b_dec: bool = True  # x - b_dec before the encoder
    normalize: str = "none"      # one of NORMALIZATIONS, per token
    hook: str = "resid_post"     # "resid_post": the output of blocks[l]; "mlp_out": blocks[l].ls2's output
    layer: int | None = None     # the block, when the checkpoint says
    tokens: str = "all"          # what it was trained on: "all", "patches" or "cls"
    files: list = field(default_factory=list)   # the checkpoint's file names

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

    def to(self, device) -> "SAE":
        """The same SAE with its tensors on ``device``."""
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
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

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations of every latent, [..., d_sae]."""
        return self.prepare(x) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latents' values, [..., d_sae]."""
        pre = self.pre(x)
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold)
        top = torch.topk(pre, self.k, dim=-1)
        values = torch.relu(top.values) if self.topk_relu else top.values
        return torch.zeros_like(pre).scatter_(-1, top.indices, values)

    def unit_pre(self, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """Each image's own latent's pre-activation: x [B, ..., d_in], units long [B] -> [B, ...]; one
        column of the encoder per image, not all d_sae (what one optimization step needs)."""
        prepared = self.prepare(x)
        columns = self.W_enc.t()[units]                                   # [B, d_in]
        shape = (prepared.shape[0],) + (1,) * (prepared.dim() - 2) + (-1,)
        return (prepared * columns.view(shape)).sum(-1) + self.b_enc[units].view(shape[:-1])

    def record(self) -> dict:
        """What the atlas records of it (every shard of its site carries it): identity and encoder."""
        return {"name": self.name, "format": self.format, "sha256": self.sha256, "files": self.files,
                "d_in": self.d_in, "d_sae": self.d_sae, "activation": self.activation, "k": self.k,
                "topk_relu": self.topk_relu, "subtract_b_dec": self.subtract_b_dec, "normalize": self.normalize,
                "hook": self.hook, "layer": self.layer, "tokens": self.tokens}


# -- reading ---------------------------------------------------------------------------------------

def detect_format(path: Path) -> str:
    """The format of the checkpoint at ``path`` (a folder or a file), from its files alone."""
    if path.is_dir():
        if (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file():
            return "saelens"
        if (path / "config.json").is_file() and list(path.glob("*.pt")) or (path / "weights.pt").is_file():
            return "prisma"
        if (path / "sae.pt").is_file():
            return "saev"
    elif path.is_file():
        with open(path, "rb") as f:
            head = f.read(1)
        if head == b"{":
            return "saev"
        if path.suffix == ".pt" and (path.parent / "config.json").is_file():
            return "prisma"
    raise AtlasError(f"{path}: not an SAE checkpoint this version reads (a SAELens folder with cfg.json and "
                     "sae_weights.safetensors, a ViT-Prisma config.json with a .pt state dict, or a saev sae.pt); "
                     "name its format with --sae-format if it is one of those")


def load_sae(path: str | Path, format: str | None = None, name: str | None = None) -> SAE:
    """The SAE at ``path`` in ``format`` (detected when None), named ``name`` (default: from the path).
    AtlasError, naming the file and what to do, for anything it cannot read or refuses."""
    path = Path(path)
    if not path.exists():
        raise AtlasError(f"--sae {path}: no such file or folder")
    format = format or detect_format(path)
    if format not in SAE_FORMATS:
        raise AtlasError(f"--sae-format {format!r}: formats are {', '.join(SAE_FORMATS)}")
    name = name or sae_name(path)
    if not SAE_SITE.fullmatch(f"sae-{name}"):
        raise AtlasError(f"--sae-name {name!r}: use lowercase letters, digits, '_' and '-' (it names the unit site)")
    reader = {"saelens": _read_saelens, "prisma": _read_prisma, "saev": _read_saev}[format]
    from safetensors import SafetensorError
    try:
        sae = reader(path, name)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError, RuntimeError, SafetensorError) as e:
        raise AtlasError(f"--sae {path}: not a readable {format} checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
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


def _hook_and_layer(hook_name: str | None) -> tuple[str, int | None]:
    """``blocks.{l}.hook_resid_post`` -> ("resid_post", l); refuses hooks this version cannot read."""
    if not hook_name:
        return "resid_post", None
    m = re.fullmatch(r"blocks\.(\d+)\.(hook_\w+)", str(hook_name))
    if not m or m[2] not in HOOKS:
        raise AtlasError(f"hook {hook_name!r}: ViT Atlas reads SAEs on blocks.<l>.hook_resid_post (the output of "
                         "timm's blocks[l]) or blocks.<l>.hook_mlp_out (blocks[l].ls2(mlp(norm2(x))))")
    return HOOKS[m[2]], int(m[1])


def _tensors(state: dict, keys=("W_enc", "b_enc", "W_dec", "b_dec")) -> list[torch.Tensor]:
    missing = [k for k in keys if k not in state]
    if missing:
        raise KeyError(f"the state dict lacks {missing} (has {sorted(state)[:8]})")
    return [state[k].detach().float().contiguous() for k in keys]


def _activation(arch: str | None, fn: str | None, kwargs: dict | None, k) -> tuple[str, int | None]:
    arch = (arch or "standard").lower()
    fn = (fn or "relu").lower()
    if arch == "jumprelu" or fn == "jumprelu":
        return "jumprelu", None
    if arch in ("topk", "batchtopk") or fn in ("topk", "batchtopk"):
        k = k if k is not None else (kwargs or {}).get("k")
        if k is None:
            raise AtlasError("a topk SAE whose configuration gives no k")
        return "topk", int(k)
    if arch != "standard" or fn != "relu":
        raise AtlasError(f"SAE architecture {arch!r} with activation {fn!r}: ViT Atlas reads standard (relu), "
                         "jumprelu and topk SAEs")
    return "relu", None


def _threshold(state: dict) -> torch.Tensor | None:
    if "threshold" in state:
        return state["threshold"].detach().float()
    if "log_threshold" in state:
        return state["log_threshold"].detach().float().exp()
    return None


def _tokens(cfg: dict) -> str:
    if cfg.get("cls_token_only"):
        return "cls"
    return "patches" if cfg.get("use_patches_only") else "all"


def _normalize(value) -> str:
    value = "none" if value in (None, False) else str(value)
    if value not in NORMALIZATIONS:
        raise AtlasError(f"normalize_activations {value!r}: ViT Atlas reads {', '.join(NORMALIZATIONS)} (fold a "
                         "dataset-wide scaling factor into W_enc and b_dec first)")
    return value


def _read_saelens(path: Path, name: str) -> SAE:
    from safetensors.torch import load_file
    cfg = json.loads((path / "cfg.json").read_text(encoding="utf-8"))
    state = load_file(str(path / "sae_weights.safetensors"))
    meta = cfg.get("metadata") or cfg.get("meta") or {}
    hook, layer = _hook_and_layer(meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point"))
    if layer is None and (meta.get("hook_layer") if meta.get("hook_layer") is not None else cfg.get("hook_layer")) is not None:
        layer = int(meta.get("hook_layer") if meta.get("hook_layer") is not None else cfg["hook_layer"])
    activation, k = _activation(cfg.get("architecture"), cfg.get("activation_fn_str"), cfg.get("activation_fn_kwargs"),
                                cfg.get("k"))
    W_enc, b_enc, W_dec, b_dec = _tensors(state)
    files = [path / "cfg.json", path / "sae_weights.safetensors"]
    return SAE(name, "saelens", _digest(files), W_enc, b_enc, W_dec, b_dec, activation, k, True,
               _threshold(state), bool(cfg.get("apply_b_dec_to_input", True)),
               _normalize(cfg.get("normalize_activations")), hook, layer, _tokens({**meta, **cfg}),
               [f.name for f in files])


def _read_prisma(path: Path, name: str) -> SAE:
    folder = path if path.is_dir() else path.parent
    weights = path if path.is_file() else sorted(folder.glob("*.pt"), key=lambda p: (p.name != "weights.pt", p.name))[0]
    loaded = safe_torch_load(weights)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8")) if (folder / "config.json").is_file() else {}
    state = loaded
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        state = loaded["state_dict"]
        for value in loaded.values():                 # a pickled config class, read as its fields
            if isinstance(value, _Record) and not cfg:
                cfg = value.fields()
    if not isinstance(state, dict):
        raise TypeError("the .pt file holds no state dict")
    hook_name = cfg.get("hook_point") or (f"blocks.{cfg['hook_point_layer']}.{cfg.get('layer_subtype', 'hook_resid_post')}"
                                          if cfg.get("hook_point_layer") is not None else None)
    hook, layer = _hook_and_layer(hook_name)
    activation, k = _activation(cfg.get("architecture"), cfg.get("activation_fn_str"), cfg.get("activation_fn_kwargs"),
                                None)
    W_enc, b_enc, W_dec, b_dec = _tensors(state)
    files = [f for f in (folder / "config.json", weights) if f.is_file()]
    return SAE(name, "prisma", _digest(files), W_enc, b_enc, W_dec, b_dec, activation, k, True, _threshold(state),
               True, _normalize(cfg.get("normalize_activations")), hook, layer, _tokens(cfg), [f.name for f in files])


def _read_saev(path: Path, name: str) -> SAE:
    file = path / "sae.pt" if path.is_dir() else path
    with open(file, "rb") as f:
        header = json.loads(f.readline())
        state = safe_torch_load(io.BytesIO(f.read()), file)
    if not isinstance(header, dict):
        raise TypeError("its header line is not a JSON object")
    schema = header.get("schema")
    cfg = header.get("cfg", header) if schema is not None else header
    activation_cfg = cfg.get("activation") if isinstance(cfg.get("activation"), dict) else \
        {"cls": header.get("cls", "Relu"), "params": {"top_k": cfg.get("top_k")}}
    kind = {"Relu": "relu", "TopK": "topk", "BatchTopK": "topk"}.get(activation_cfg.get("cls", "Relu"))
    if kind is None:
        raise AtlasError(f"saev activation {activation_cfg.get('cls')!r}: ViT Atlas reads Relu, TopK and BatchTopK")
    k = (activation_cfg.get("params") or {}).get("top_k", 32) if kind == "topk" else None
    W_enc, b_enc, W_dec, b_dec = _tensors(state)
    # saev encodes x from header schema 2 on; releases before it were trained on x - b_dec
    return SAE(name, "saev", _digest([file]), W_enc, b_enc, W_dec, b_dec, kind, int(k) if k else None, False, None,
               not (isinstance(schema, int) and schema >= 2), "none", "resid_post", None, "patches", [file.name])


def _check(sae: SAE, path: Path) -> None:
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
    if not all(torch.isfinite(t).all() for t in (sae.W_enc, sae.b_enc, sae.b_dec)):
        raise AtlasError(f"--sae {path}: NaN or inf in its encoder weights")


# -- loading pickles without running them ---------------------------------------------------------

class _Record:
    """What a pickled config class becomes: its constructor arguments and fields, nothing run."""

    def __init__(self, *args, **kwargs):
        self.__dict__["_args"] = (args, kwargs)

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}        # (dict, slots)
        if isinstance(state, dict):
            self.__dict__.update(state)

    def fields(self) -> dict:
        """Its fields as plain JSON-like values (what config.json would have said)."""
        out = {}
        for key, value in self.__dict__.items():
            if key.startswith("_"):
                continue
            out[key] = value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)
        return out


def safe_torch_load(source, where: Path | None = None):
    """``torch.load`` of a checkpoint (a path or bytes), refusing every pickle that would import or call
    anything but torch's tensor machinery and a ViT-Prisma config class (read as a ``_Record``)."""
    where = where or source
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass                  # a global the weights-only unpickler does not know: which one, below
    except Exception as e:   # noqa: BLE001 - damaged bytes fail anywhere in torch.load: one line for the user
        raise AtlasError(f"{where}: not a torch checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    if hasattr(source, "seek"):
        source.seek(0)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except Exception as e:   # noqa: BLE001 - not a torch checkpoint at all: one line for the user
        raise AtlasError(f"{where}: not a torch checkpoint ({type(e).__name__})") from None
    refused = [n for n in names if not n.startswith(RECORD_MODULES)]
    if refused or not names:
        raise AtlasError(f"{where}: refused: unpickling it would import or call {', '.join(refused[:3]) or 'code'} "
                         "(a checkpoint needs only tensors; re-save it as a state dict or safetensors)")
    records = [(type(n.rsplit(".", 1)[-1], (_Record,), {}), n) for n in names]
    if hasattr(source, "seek"):
        source.seek(0)
    with torch.serialization.safe_globals(records):
        try:
            return torch.load(source, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise AtlasError(f"{where}: refused by the weights-only unpickler ({str(e).splitlines()[0][:160]})") from None
