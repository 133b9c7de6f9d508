"""Units of timm models: layer discovery per family, patch grids, and the truncated forward."""
from __future__ import annotations

import pytest
import timm
import torch

from atlas.format import AtlasError
from builder.sites import find_layers, run_to, token_grid

# (timm name, shrinking kwargs, expected [(units, grid, prefix)] per FFN layer), 64 px inputs.
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=64, depth=2, embed_dim=48, num_heads=2),
            [(192, (4, 4), 1)] * 2),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=64, depth=2, embed_dim=48, num_heads=2),
                       [(192, (4, 4), 2)] * 2),
    "clip_quickgelu": ("vit_base_patch16_clip_quickgelu_224", dict(img_size=64, depth=2, embed_dim=48, num_heads=2),
                       [(192, (4, 4), 1)] * 2),
    "vit_registers": ("vit_small_patch16_224", dict(img_size=64, depth=2, embed_dim=48, num_heads=2, reg_tokens=4),
                      [(192, (4, 4), 5)] * 2),
    "swin": ("swin_tiny_patch4_window7_224",
             dict(img_size=64, depths=(1, 1), num_heads=(2, 4), embed_dim=32, window_size=4),
             [(128, (16, 16), 0), (256, (8, 8), 0)]),
    "pit": ("pit_ti_224", dict(img_size=64, depth=(1, 1, 1)),
            [(256, (7, 7), 1), (512, (4, 4), 1), (1024, (2, 2), 1)]),
    "pit_distilled": ("pit_ti_distilled_224", dict(img_size=64, depth=(1, 1, 1)),
                      [(256, (7, 7), 2), (512, (4, 4), 2), (1024, (2, 2), 2)]),
    "convit": ("convit_tiny", dict(img_size=64, depth=3, local_up_to_layer=1, embed_dim=48, num_heads=4),
               [(768, (4, 4), 0), (768, (4, 4), 1), (768, (4, 4), 1)]),  # ConViT scales embed_dim by heads
    "coat_lite": ("coat_lite_tiny", dict(img_size=64, serial_depths=(1, 1, 1, 1)),
                  [(512, (16, 16), 1), (1024, (8, 8), 1), (1024, (4, 4), 1), (1280, (2, 2), 1)]),
    "coat_parallel": ("coat_tiny", dict(img_size=64, serial_depths=(1, 1, 1, 1), parallel_depth=1),
                      [(608, (16, 16), 1), (608, (8, 8), 1), (608, (4, 4), 1), (608, (2, 2), 1),
                       (608, (8, 8), 1), (608, (4, 4), 1), (608, (2, 2), 1)]),
    "twins_pcpvt": ("twins_pcpvt_small", dict(img_size=64, depths=(1, 1, 1, 1)),
                    [(512, (16, 16), 0), (1024, (8, 8), 0), (1280, (4, 4), 0), (2048, (2, 2), 0)]),
    "twins_svt": ("twins_svt_small", dict(img_size=64, depths=(1, 1, 1, 1)),
                  [(256, (16, 16), 0), (512, (8, 8), 0), (1024, (4, 4), 0), (2048, (2, 2), 0)]),
}


def _model(name, kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval().requires_grad_(False)


def _plain_hook_output(model, module_name, x, call=0):
    """Output of the ``call``-th call of a module in a full forward, with a plain timm hook."""
    outputs = []
    handle = model.get_submodule(module_name).register_forward_hook(lambda m, i, o: outputs.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return outputs[call]


@pytest.mark.parametrize("family", FAMILIES)
def test_ffn_units_and_grids_of_each_family(family):
    name, kwargs, expected = FAMILIES[family]
    model = _model(name, kwargs)
    layers = find_layers(model, "ffn", (64, 64))
    assert [(layer.units, layer.grid, layer.prefix) for layer in layers] == expected
    assert [layer.index for layer in layers] == list(range(len(expected)))
    # units are the width of the MLP's hidden layer, and the grid is what the hooked output holds
    x = torch.rand(2, 3, 64, 64)
    for layer in layers:
        mlp = model.get_submodule(layer.module.rpartition(".")[0])
        assert layer.units == mlp.fc1.out_features
        raw = _plain_hook_output(model, layer.module, x, layer.call)
        assert raw.shape[1] == layer.prefix + layer.grid[0] * layer.grid[1]


@pytest.mark.parametrize("family", ["vit", "deit_distilled", "swin", "pit", "coat_parallel", "twins_svt"])
def test_truncated_forward_matches_full_forward_with_hook(family):
    name, kwargs, _ = FAMILIES[family]
    model = _model(name, kwargs)
    x = torch.rand(3, 3, 64, 64)
    for layer in find_layers(model, "ffn", (64, 64)):
        with torch.no_grad():
            (grid,) = run_to(model, x, [layer])
        raw = _plain_hook_output(model, layer.module, x, layer.call)
        patches = raw[:, layer.prefix:, :].reshape(3, *layer.grid, layer.units)
        torch.testing.assert_close(grid, patches, rtol=0, atol=0)


def test_truncated_forward_never_runs_deeper_blocks_or_the_head():
    name, kwargs, _ = FAMILIES["vit"]
    model = _model(name, dict(kwargs, depth=4))
    ran = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda m, inp, out, i=i: ran.append(i))
    model.head.register_forward_hook(lambda m, inp, out: ran.append("head"))
    layer = find_layers(model, "ffn", (64, 64))[1]
    ran.clear()
    run_to(model, torch.rand(1, 3, 64, 64), [layer])
    assert ran == [0]  # block 0 completes; block 1 stops inside its MLP; blocks 2, 3 and the head never run


def test_qkv_attn_block_sites_read_the_documented_tensors():
    name, kwargs, _ = FAMILIES["deit_distilled"]
    model = _model(name, kwargs)
    x = torch.rand(2, 3, 64, 64)
    width = 48
    for site, module, lo in (("q", "attn.qkv", 0), ("k", "attn.qkv", width), ("v", "attn.qkv", 2 * width),
                             ("attn", "attn", 0), ("block", "", 0)):
        layers = find_layers(model, site, (64, 64))
        assert [layer.index for layer in layers] == [0, 1]
        for layer in layers:
            assert layer.units == width and layer.grid == (4, 4) and layer.prefix == 2
            path = f"blocks.{layer.index}" + (f".{module}" if module else "")
            raw = _plain_hook_output(model, path, x)
            with torch.no_grad():
                (grid,) = run_to(model, x, [layer])
            expected = raw[:, 2:, lo:lo + width].reshape(2, 4, 4, width)
            torch.testing.assert_close(grid, expected, rtol=0, atol=0)


def test_sites_a_model_lacks_are_refused_with_the_available_ones():
    name, kwargs, _ = FAMILIES["swin"]
    model = _model(name, kwargs)
    with pytest.raises(AtlasError, match=r"site 'q' is not available.*available: ffn, block"):
        find_layers(model, "q", (64, 64))
    with pytest.raises(AtlasError, match="unknown site"):
        find_layers(model, "mlp", (64, 64))


def test_token_grid_prefers_the_models_prefix_and_keeps_the_aspect_ratio():
    assert token_grid(197, (224, 224), [1]) == (1, (14, 14))
    assert token_grid(196, (224, 224), [1]) == (0, (14, 14))   # ConViT before its CLS token joins
    assert token_grid(201, (224, 224), [5]) == (5, (14, 14))   # CLS + 4 registers
    assert token_grid(1 + 14 * 20, (224, 320), [1]) == (1, (14, 20))
    assert token_grid(7, (224, 224), []) is None
