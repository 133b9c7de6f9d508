"""The demo's tiny image-text model, so open-vocabulary labels (CLIP-Dissect) run offline on the demo.

Trained contrastively (CLIP's symmetric InfoNCE with a learned temperature) on generated shapes and captions
the generator can write from what it drew: "a red star on stripes with a dot and a bar", and parts of it
("star", "red", "stripes", "red star"), so single words, which CLIP-Dissect embeds, land where their images
are. Image encoder: four strided convolutions and a projection; text encoder: the mean of its words'
embeddings and a projection (the vocabulary is the generator's words). Weights:
``weights/clip_atlas_demo.safetensors``, trained by `vit-atlas train-demo --models clip`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .models import WEIGHTS
from .shapes import CLASSES, COLOURS, DISTRACTORS, SIZE, TEXTURES, Sample

NAME = "clip_atlas_demo"
VOCABULARY = ("<unk>", "a", "on", "with", "and", *CLASSES, *DISTRACTORS, *COLOURS, *TEXTURES)
# the concepts it can name, with their categories in the demo's concept dataset: its default word list
WORDS = (*((w, "object") for w in (*CLASSES, *DISTRACTORS)), *((w, "color") for w in COLOURS),
         *((w, "texture") for w in TEXTURES))
WIDTH = 64


class DemoClip(nn.Module):
    """Images [B, 3, 64, 64] in [0, 1] and captions (lists of words) into one 64-d space."""

    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for width in (32, 64, 128, 128):
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), nn.GELU()]
            c = width
        self.image = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, WIDTH))
        self.words = nn.Embedding(len(VOCABULARY), WIDTH)
        self.text = nn.Linear(WIDTH, WIDTH)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.name, self.default_words = NAME, WORDS

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image((x - 0.5) / 0.5), dim=-1)

    def encode_texts(self, captions: list[str]) -> torch.Tensor:
        tokens = [[VOCABULARY.index(w) if w in VOCABULARY else 0 for w in c.lower().split()] or [0] for c in captions]
        length = max(len(t) for t in tokens)
        ids = torch.tensor([t + [0] * (length - len(t)) for t in tokens])
        mask = torch.tensor([[1.0] * len(t) + [0.0] * (length - len(t)) for t in tokens])
        pooled = (self.words(ids) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return F.normalize(self.text(pooled), dim=-1)

    # the interface of builder.labels.imagetext
    @torch.no_grad()
    def embed_images(self, images: list) -> torch.Tensor:
        """[n, 64] for PIL images (None: a zero row), resized to 64 px."""
        x = torch.stack([torch.from_numpy(np.array(im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))).float()
                         .permute(2, 0, 1) / 255 if im is not None else torch.zeros(3, SIZE, SIZE) for im in images])
        e = self.encode_images(x)
        return torch.where(torch.tensor([im is not None for im in images])[:, None], e, torch.zeros_like(e))

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """[m, 64] for words or captions."""
        return self.encode_texts(list(texts))

    @classmethod
    def load(cls, device=None) -> "DemoClip":
        """The committed weights."""
        from safetensors.torch import load_file
        model = cls()
        model.load_state_dict(load_file(str(WEIGHTS / f"{NAME}.safetensors")))
        return model.eval()


def captions(sample: Sample, rng: np.random.Generator) -> str:
    """One caption of a generated sample: the whole description or a part of it."""
    shape, colour, texture = CLASSES[sample.label], sample.colour, sample.texture
    full = f"a {colour} {shape} on {texture}"
    things = sorted(set(sample.distractors))
    if things:
        full += " with " + " and ".join(f"a {t}" for t in things)
    choices = [full, full, shape, colour, texture, f"{colour} {shape}", f"{shape} on {texture}", *things]
    return choices[rng.integers(len(choices))]


def train_clip(x: torch.Tensor, samples: list[Sample], epochs: int, seed: int, batch_size: int = 256, lr: float = 2e-3,
               progress: bool = True):
    """Train the demo's image-text model on uint8 images ``x`` [N, 3, 64, 64] and their samples; returns the
    model and its losses."""
    from .fit import fit
    torch.manual_seed(seed)
    model = DemoClip()
    rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)

    def loss_of(idx):
        img = model.encode_images(x[idx].float() / 255)
        txt = model.encode_texts([captions(samples[i], rng) for i in idx.tolist()])
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        target = torch.arange(len(idx))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    losses = fit(model, loss_of, len(x), epochs, batch_size, lr, 0.01, 0.05, g, "train clip_atlas_demo", progress)
    return model.eval(), losses


@torch.no_grad()
def word_accuracy(model: DemoClip, x: torch.Tensor, samples: list[Sample]) -> dict[str, float]:
    """On held-out images: how often the nearest shape, colour and texture word is the right one."""
    img = model.encode_images(x.float() / 255)
    out = {}
    for kind, words, truth in (("shape", CLASSES, [CLASSES[s.label] for s in samples]),
                               ("colour", tuple(COLOURS), [s.colour for s in samples]),
                               ("texture", TEXTURES, [s.texture for s in samples])):
        best = (img @ model.encode_texts(list(words)).T).argmax(1)
        out[kind] = float(np.mean([words[b] == t for b, t in zip(best.tolist(), truth)]))
    return out
