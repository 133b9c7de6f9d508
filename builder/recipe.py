"""The feature-visualization recipe (paper section 3 and appendix B) in one dataclass, and its presets."""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass

from atlas.format import AtlasError

MAX_STEPS = 100_000        # a recipe longer than this is a typo (the paper's is 400)
MAX_COPIES = 1024          # augmented copies per step (the paper's: 8)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a unit's optimized image besides the model and the seeds.

    Each step optimizes ``batch_copies`` augmented copies A(x) = GS(CS(Jitter(x))) of the image x and
    minimizes  -mean_copies(activation) + tv * mean_copies(TV(copy)),  the activation being the unit's
    mean over patch tokens. The defaults are the ``paper`` preset: what the authors' runs behind the
    paper's figures optimized (docs/DECISIONS.md, "The paper preset"); ``paper-text`` follows the
    paper's text literally.
    """
    preset: str = "paper"              # the preset these values started from
    parametrization: str = "pixel"     # what is optimized: "pixel" (the image) or "fourier" (builder.param)
    steps: int = 400                   # optimizer steps (must be at least 1)
    batch_copies: int = 8              # augmented copies of the image per step
    lr: float = 0.1                    # Adam's learning rate, cosine-annealed to 0 (lr_at)
    betas: tuple[float, float] = (0.5, 0.99)
    tv: float = 4e-4                   # TV weight against the copies' *mean* activation; their runs: 8 x 5e-5
    tv_input: str = "augmented"        # TV of the augmented copies, or "unnoised": the copies before GS
    tv_norm: str = "l2"                # "l2": each difference image's unsquared L2 norm (their code); "l1":
                                       # the mean absolute difference, which keeps edges and flattens regions
    jitter: int = 32                   # largest circular shift per axis, for a jitter_reference-pixel side ...
    jitter_reference: int = 224        # ... scaled to the input and never below one of the layer's patches;
                                       # 0: jitter is in pixels of the input, as asked (no floor)
    jitter_shared: bool = True         # one shift for all copies of a step (their code), else one per copy
    rotate: float = 0.0                # largest rotation in degrees (an affine transform replaces the roll)
    scale_jitter: float = 0.0          # largest relative zoom: scale in [1 - s, 1 + s] (affine, like rotate)
    color_shift_mean: float = 1.0      # CS: mu ~ U(-a, a) per copy and channel
    color_shift_log_std: float = 1.0   # CS: sigma = exp(U(-b, b)) per copy and channel; CS(x) = sigma*x + mu
    noise_start: float = 0.5           # GS: noise std at the first step, falling linearly ...
    noise_end: float = 0.0             # ... to this at the last (noise_std)
    noise: str = "channel"             # GS: one offset per copy and channel (their code), or "pixel" (paper text)
    clean_steps: int = 0               # the last steps optimize the unaugmented image alone, one copy
    loss_points: int = 16              # how many steps the stored loss curve samples

    def __post_init__(self):
        for f in dataclasses.fields(self):      # a recipe comes from flags and spec files: NaN, inf, or 1.5 steps
            value = getattr(self, f.name)
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, float) and not math.isfinite(v):
                    raise AtlasError(f"recipe {f.name} must be a finite number, not {value}")
                if f.type in ("int", "bool") and (not isinstance(v, int) or f.type == "int" and isinstance(v, bool)):
                    raise AtlasError(f"recipe {f.name} must be a whole number, not {value!r}")
        if not (1 <= self.steps <= MAX_STEPS and 1 <= self.batch_copies <= MAX_COPIES):
            raise AtlasError(f"recipe steps and batch_copies must be at least 1 (at most {MAX_STEPS} and {MAX_COPIES}), "
                             f"not {self.steps} and {self.batch_copies}")
        if not all(0 <= b < 1 for b in self.betas) or len(self.betas) != 2:
            raise AtlasError(f"recipe betas must be two numbers in [0, 1), not {self.betas}")
        if self.lr <= 0 or self.tv < 0:
            raise AtlasError(f"recipe lr must be positive and tv not negative, not {self.lr} and {self.tv}")
        if not 0 <= self.clean_steps <= self.steps:
            raise AtlasError(f"recipe clean_steps must be between 0 and steps ({self.steps}), not {self.clean_steps}")
        if self.jitter < 0 or self.jitter_reference < 0 or self.loss_points < 1:
            raise AtlasError("recipe jitter and jitter_reference must not be negative, loss_points at least 1")
        if self.tv_norm not in ("l2", "l1"):
            raise AtlasError(f"tv_norm must be 'l2' or 'l1', not {self.tv_norm!r}")
        if self.noise not in ("pixel", "channel"):
            raise AtlasError(f"noise must be 'pixel' or 'channel', not {self.noise!r}")
        if self.parametrization not in ("pixel", "fourier"):
            raise AtlasError(f"parametrization must be 'pixel' or 'fourier', not {self.parametrization!r}")
        if self.rotate < 0 or not 0 <= self.scale_jitter < 1:
            raise AtlasError(f"recipe rotate must not be negative and scale_jitter in [0, 1), not {self.rotate} "
                             f"and {self.scale_jitter}")
        if self.tv_input not in ("augmented", "unnoised"):
            raise AtlasError(f"tv_input must be 'augmented' or 'unnoised', not {self.tv_input!r}")

    @property
    def affine(self) -> bool:
        """Whether copies are rotated or zoomed (an affine resampling) rather than rolled."""
        return self.rotate > 0 or self.scale_jitter > 0

    def jitter_pixels(self, size: tuple[int, int], patch: tuple[int, int] = (1, 1)) -> tuple[int, int]:
        """The largest shift, in pixels, for an image of ``size`` (H, W) whose layer reads tokens of
        ``patch`` pixels: the recipe's jitter scaled to the side, but never below one patch (a shift
        within a patch moves no token boundary); with ``jitter_reference`` 0, ``jitter`` pixels as asked."""
        if self.jitter_reference == 0:
            return (self.jitter, self.jitter)
        return tuple(max(round(self.jitter * s / self.jitter_reference), p if self.jitter else 0)
                     for s, p in zip(size, patch))

    def lr_at(self, step: int) -> float:
        """Learning rate at ``step``: cosine annealing from ``lr`` to 0 over the run."""
        return self.lr * 0.5 * (1 + math.cos(math.pi * step / self.steps))

    def noise_std(self, step: int) -> float:
        """Std of the Gaussian noise at ``step`` (linear from noise_start to noise_end)."""
        frac = step / (self.steps - 1) if self.steps > 1 else 1.0
        return self.noise_start + (self.noise_end - self.noise_start) * frac

    def loss_steps(self) -> list[int]:
        """The steps at which the stored loss curve samples the loss."""
        n = min(self.loss_points, self.steps)
        return sorted({round(i * (self.steps - 1) / max(n - 1, 1)) for i in range(n)})

    def to_dict(self) -> dict:
        """The recipe as plain JSON-able values (stored in every shard)."""
        return dataclasses.asdict(self)

    def images_per_unit(self) -> int:
        """Image passes (forward to the layer and backward) one unit's optimization costs: the copies
        of every augmented step, one image per clean step."""
        return (self.steps - self.clean_steps) * self.batch_copies + self.clean_steps

    def trial(self) -> "Recipe":
        """One step that allocates what the recipe's first step does (the batch-size trial): its copies,
        and its noise at the first step's std (``shortened(1)`` would end the noise schedule at once)."""
        return dataclasses.replace(self.shortened(1), noise_end=self.noise_start)

    def shortened(self, steps: int) -> "Recipe":
        """The same recipe over ``steps`` steps (trials, calibration) with the same share of clean steps."""
        return dataclasses.replace(self, steps=steps, clean_steps=self.clean_steps * steps // self.steps)


PRESETS = {
    "paper": Recipe(),
    # the paper's text taken literally: per-pixel noise that TV sees, one shift per copy, and the
    # paper's lambda against the mean activation (8x weaker than in the authors' runs)
    "paper-text": Recipe(preset="paper-text", tv=5e-5, noise="pixel", jitter_shared=False),
    # CPU-sized: fewer copies and steps with a larger step size, and the last 8 steps on the clean
    # image so the stored image's own activation climbs (the paper's copies never see it as is).
    "quick": Recipe(preset="quick", steps=32, batch_copies=4, lr=0.2, clean_steps=8),
    # the second picture (issue 16): lucent's Fourier parametrization and transforms (jitter 8 px at
    # 224, zoom +-10%, rotation +-10 degrees, no colour shift, noise or TV, lr 0.05), ensembled over 8
    # copies like the paper's; stored in the shard part "fourier" (docs/DECISIONS.md)
    "fourier": Recipe(preset="fourier", parametrization="fourier", lr=0.05, tv=0.0, jitter=8, jitter_shared=False,
                      rotate=10.0, scale_jitter=0.1, color_shift_mean=0.0, color_shift_log_std=0.0,
                      noise_start=0.0),
}


# What each preset is, for --help and the docs (one line each; the values are PRESETS').
PRESET_HELP = {
    "paper": "what the authors' runs behind the paper's figures optimized (400 steps of 8 copies)",
    "paper-text": "the paper's text literally (per-pixel noise, its TV weight, a shift per copy)",
    "quick": "the paper preset at CPU size (32 steps of 4 copies, the last 8 on the clean image)",
    "fourier": "lucent's Fourier parametrization and transforms, ensembled over 8 copies (part fourier)",
}


def resolve_recipe(preset: str = "paper", **overrides) -> Recipe:
    """The preset's recipe with ``overrides`` (None values ignored) applied. Overriding ``steps``
    alone keeps the preset's share of clean steps (quick: a quarter) rather than its count."""
    if preset not in PRESETS:
        raise AtlasError(f"unknown preset {preset!r}; presets are {', '.join(PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - {f.name for f in dataclasses.fields(Recipe)}
    if unknown:
        raise AtlasError(f"unknown recipe fields {sorted(unknown)}")
    base = PRESETS[preset]
    if "steps" in changes and "clean_steps" not in changes:
        base = base.shortened(changes.pop("steps"))
    if "betas" in changes:
        changes["betas"] = tuple(changes["betas"])
    return dataclasses.replace(base, **changes)


def unit_seed(model: str, site: str, layer: int, unit: int, seed: int, retry: int = 0) -> int:
    """A unit's own seed: the first 8 bytes (big-endian) of sha256("<model>/<site>/<layer>/<unit>/<seed>"),
    top bit cleared; a retry after NaN/inf appends "/retry<n>". Independent of which units share a
    batch, so results do not depend on batching."""
    text = f"{model}/{site}/{layer}/{unit}/{seed}" + (f"/retry{retry}" if retry else "")
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)
