"""The demo's two small models, registered as timm model names so ``--model`` takes them like any other.

``vit_atlas_demo``: a VisionTransformer for 64x64 images, patch 8 (an 8x8 grid + CLS), width 64,
6 blocks of 4 heads, FFN width 256 (1,536 FFN units). ``resnet_atlas_demo``: a ResNet with one
BasicBlock per stage and widths 16/32/64/128. Both classify the 8 shapes of ``builder.demo.shapes``.
Their default pretrained tag ``shapes`` points at the weights committed in ``builder/demo/weights``,
so ``pretrained=True`` works offline; the demo itself loads them with ``--checkpoint``.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, _create_resnet
from timm.models.vision_transformer import _create_vision_transformer

from .shapes import CLASSES, SIZE

WEIGHTS = Path(str(resources.files("builder.demo") / "weights"))   # the committed weights, shipped in the package
VIT = "vit_atlas_demo"
CNN = "resnet_atlas_demo"


def weights_file(name: str) -> Path:
    """The committed safetensors file of a demo model."""
    return WEIGHTS / f"{name}.safetensors"


def _cfg(name: str) -> dict:
    return {"file": str(weights_file(name)), "num_classes": len(CLASSES), "input_size": (3, SIZE, SIZE),
            "crop_pct": 1.0, "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
            "first_conv": "patch_embed.proj" if name == VIT else "conv1",
            "classifier": "head" if name == VIT else "fc", "license": "mit", "label_names": list(CLASSES)}


default_cfgs = generate_default_cfgs({f"{VIT}.shapes": _cfg(VIT), f"{CNN}.shapes": _cfg(CNN)})


@register_model
def vit_atlas_demo(pretrained: bool = False, **kwargs):
    """ViT for the demo: 64 px, patch 8, width 64, 6 blocks, 4 heads."""
    args = dict(img_size=SIZE, patch_size=8, embed_dim=64, depth=6, num_heads=4, num_classes=len(CLASSES))
    return _create_vision_transformer(VIT, pretrained=pretrained, **{**args, **kwargs})


@register_model
def resnet_atlas_demo(pretrained: bool = False, **kwargs):
    """ResNet for the demo: one BasicBlock per stage, widths 16/32/64/128."""
    args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=16,
                num_classes=len(CLASSES))
    return _create_resnet(CNN, pretrained, **{**args, **kwargs})
