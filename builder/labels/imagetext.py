"""Image-text models for open-vocabulary labels (CLIP-Dissect): each embeds images and words into one space.

    --clip ViT-B-32/openai      an open_clip model by name and pretrained tag (the ``labels`` extra installs
                                open_clip_torch; the weights come from its usual source, or a local file tag)
    --clip demo                 the demo's tiny image-text model, trained on the shapes' captions and shipped
                                with the package (builder.demo.clip)

Both give L2-normalized embeddings; CLIP-Dissect compares them by cosine. Words are embedded as they are
(no prompt template), as CLIP-Dissect does.
"""
from __future__ import annotations

import torch

from atlas.format import AtlasError


class OpenClipModel:
    """An open_clip model and its preprocessing, for ``embed_images`` and ``embed_texts``."""

    def __init__(self, spec: str, device: torch.device):
        name, _, tag = spec.partition("/")
        try:
            import open_clip
        except ImportError:
            raise AtlasError(f"--clip {spec}: open_clip is not installed; pip install 'vit-atlas[labels]'") from None
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(name, pretrained=tag or None,
                                                                                   device=device)
        except (RuntimeError, ValueError, OSError) as e:
            raise AtlasError(f"--clip {spec}: open_clip could not load it ({str(e).splitlines()[0][:160]})") from None
        self.tokenizer = open_clip.get_tokenizer(name)
        self.model.eval()
        self.device, self.name = device, f"open_clip {spec}"
        self.default_words = None   # no vocabulary of its own: --words or wordfreq

    @torch.no_grad()
    def embed_images(self, images: list) -> torch.Tensor:
        """[n, d] for PIL images (None: a zero row)."""
        x = [self.preprocess(im) if im is not None else None for im in images]
        shape = next((t.shape for t in x if t is not None), None)
        batch = torch.stack([t if t is not None else torch.zeros(shape) for t in x]).to(self.device)
        e = self.model.encode_image(batch).float()
        e = e / e.norm(dim=-1, keepdim=True)
        return torch.where(torch.tensor([t is not None for t in x], device=e.device)[:, None], e, torch.zeros_like(e)).cpu()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """[m, d] for words."""
        out = []
        for lo in range(0, len(texts), 256):
            e = self.model.encode_text(self.tokenizer(texts[lo:lo + 256]).to(self.device)).float()
            out.append((e / e.norm(dim=-1, keepdim=True)).cpu())
        return torch.cat(out)


def load_image_text_model(spec: str, device: torch.device):
    """The image-text model ``spec`` names (see the module docstring)."""
    if spec == "demo":
        from ..demo.clip import DemoClip
        return DemoClip.load(device)
    if "/" not in spec:
        raise AtlasError(f"--clip {spec!r}: give an open_clip model name and pretrained tag, e.g. ViT-B-32/openai, "
                         "or demo")
    return OpenClipModel(spec, device)
