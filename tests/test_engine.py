"""The feature-visualization engine: recipe, augmentations, objective, batch independence."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from atlas.format import AtlasError
from builder.augment import Draw, augment, draw, roll_each
from builder.objective import total_variation, unit_losses
from builder.recipe import PRESETS, resolve_recipe, unit_seed
from builder.sites import find_layers, run_to
from builder.visualize import optimize_units


def test_paper_preset_is_the_papers_recipe():
    r = PRESETS["paper"]
    assert (r.steps, r.batch_copies, r.lr, r.betas, r.tv) == (400, 8, 0.1, (0.5, 0.99), 5e-5)
    assert r.jitter_pixels((224, 224)) == (32, 32) and r.jitter_pixels((64, 96)) == (9, 14)
    assert r.noise_std(0) == 0.5 and r.noise_std(399) == 0.0 and r.noise_std(133) == pytest.approx(0.5 * (1 - 133 / 399))
    assert r.loss_steps()[0] == 0 and r.loss_steps()[-1] == 399 and len(r.loss_steps()) == 16


def test_overrides_and_bad_values():
    r = resolve_recipe("quick", steps=7, lr=None, tv=0.0)
    assert (r.preset, r.steps, r.tv, r.lr) == ("quick", 7, 0.0, PRESETS["quick"].lr)
    with pytest.raises(AtlasError, match="unknown preset"):
        resolve_recipe("fast")
    with pytest.raises(AtlasError, match="at least 1"):
        resolve_recipe("paper", steps=0)
    # overriding steps keeps the preset's share of clean steps; an explicit count wins
    assert PRESETS["paper"].clean_steps == 0 and resolve_recipe("quick", steps=8).clean_steps == 2
    assert resolve_recipe("quick", steps=8, clean_steps=0).clean_steps == 0
    with pytest.raises(AtlasError, match="--clean-steps"):
        resolve_recipe("paper", steps=4, clean_steps=5)
    quick = PRESETS["quick"]
    assert quick.images_per_unit() == (32 - 8) * 4 + 8 and PRESETS["paper"].images_per_unit() == 400 * 8
    assert quick.shortened(1).clean_steps == 0 and quick.shortened(16).clean_steps == 4


def test_unit_seed_is_the_documented_sha256_derivation():
    digest = hashlib.sha256(b"vit_x/ffn/3/42/7").digest()
    assert unit_seed("vit_x", "ffn", 3, 42, 7) == int.from_bytes(digest[:8], "big") & (2**63 - 1)
    retry = hashlib.sha256(b"vit_x/ffn/3/42/7/retry1").digest()
    assert unit_seed("vit_x", "ffn", 3, 42, 7, retry=1) == int.from_bytes(retry[:8], "big") & (2**63 - 1)
    assert len({unit_seed("m", "ffn", layer, u, 0) for layer in range(4) for u in range(100)}) == 400


def test_roll_each_is_torch_roll_per_image_and_its_gradient_rolls_back():
    x = torch.rand(5, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    shifts = torch.tensor([[0, 0], [1, -2], [-3, 4], [7, 9], [-8, 1]])
    expected = torch.stack([torch.roll(x[i], tuple(shifts[i].tolist()), (1, 2)) for i in range(5)])
    torch.testing.assert_close(roll_each(x, shifts), expected, rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda t: roll_each(t, shifts), (x,))


def test_draw_ranges_and_per_generator_independence():
    recipe = resolve_recipe("paper", batch_copies=64)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    d = draw(gens, recipe, (224, 224), "cpu")
    assert d.shifts.shape == (128, 2) and d.shifts.abs().max() <= 32 and d.shifts.abs().max() >= 25
    assert d.offset.abs().max() <= 1 and (d.scale.log().abs() <= 1).all() and d.noise.shape == (128, 3, 224, 224)
    alone = draw([torch.Generator().manual_seed(2)], recipe, (224, 224), "cpu")
    torch.testing.assert_close(alone.noise, d.noise[64:], rtol=0, atol=0)  # unit 2's stream ignores unit 1
    channel = draw([torch.Generator().manual_seed(1)], resolve_recipe("paper", noise="channel"), (224, 224), "cpu")
    assert channel.noise.shape == (8, 3, 1, 1)


def test_augment_is_color_shift_of_jitter_plus_scaled_noise():
    x = torch.rand(2, 3, 8, 8)
    shifts = torch.tensor([[1, 2], [0, -1], [3, 3], [-2, 0]])
    d = Draw(shifts, torch.full((4, 3, 1, 1), 2.0), torch.full((4, 3, 1, 1), -0.5), torch.ones(4, 3, 8, 8))
    out = augment(x, d, noise_std=0.25)
    expected = torch.roll(x[1], (3, 3), (1, 2)) * 2.0 - 0.5 + 0.25
    torch.testing.assert_close(out[2], expected)


def test_total_variation_of_a_ramp():
    H, W, a = 6, 9, 0.1
    ramp = (torch.arange(W, dtype=torch.float64) * a).expand(1, 3, H, W)
    expected = a * (np.sqrt(H * (W - 1)) + 2 * np.sqrt((H - 1) * (W - 1)))
    assert total_variation(ramp).item() == pytest.approx(expected)
    assert total_variation(torch.full((2, 3, 5, 5), 0.7)).abs().max() == 0


def test_unit_losses_read_only_each_units_channel():
    grid = torch.zeros(4, 2, 2, 6)
    grid[0:2, :, :, 1] = 3.0   # unit 0's copies, its channel 1
    grid[2:4, :, :, 4] = -1.0  # unit 1's copies, its channel 4
    grid[:, :, :, 0] = 100.0   # a channel nobody asked for
    losses = unit_losses(grid, torch.zeros(4, 3, 5, 5), torch.tensor([1, 4]), copies=2, tv_weight=0.5)
    torch.testing.assert_close(losses, torch.tensor([-3.0, 1.0]))


def test_a_unit_alone_and_in_a_batch_of_32_gives_the_same_image(tiny_vit):
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[1]
    recipe = resolve_recipe("quick", steps=12)
    units = list(range(40, 72))
    seeds = [unit_seed("t", "ffn", 1, u, 0) for u in units]
    batch = optimize_units(tiny_vit, layer, units, seeds, recipe, torch.device("cpu"))
    alone = optimize_units(tiny_vit, layer, [units[13]], [seeds[13]], recipe, torch.device("cpu"))
    assert (batch.pixels[13] - alone.pixels[0]).abs().max() <= 1e-5
    assert np.abs(batch.loss[13] - alone.loss[0]).max() <= 1e-5
    assert (batch.image[13].astype(int) - alone.image[0]).__abs__().max() <= 1


def test_optimization_raises_the_units_activation(tiny_vit):
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[2]
    units = list(range(16))
    seeds = [unit_seed("t", "ffn", 2, u, 0) for u in units]
    # without augmentations the objective is the unit's plain activation: it must rise for every unit
    plain = resolve_recipe("quick", steps=30, jitter=0, color_shift_mean=0.0, color_shift_log_std=0.0,
                           noise_start=0.0, tv=0.0)
    result = optimize_units(tiny_vit, layer, units, seeds, plain, torch.device("cpu"))
    start = torch.stack([torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(s)) for s in seeds])
    with torch.no_grad():
        (grid,) = run_to(tiny_vit.model, tiny_vit.normalize(start), [layer])
    before = grid[torch.arange(16), :, :, torch.tensor(units)].mean(dim=(1, 2)).numpy()
    assert (result.activation > before + 0.05).all()
    np.testing.assert_allclose(-result.loss[:, -1], result.activation, rtol=0.05, atol=0.02)
    # with the recipe's augmentations the loss on augmented copies (noisy step to step) falls
    full = optimize_units(tiny_vit, layer, units, seeds, resolve_recipe("quick", steps=40), torch.device("cpu"))
    assert (full.loss[:, -4:].mean(1) < full.loss[:, :4].mean(1)).mean() >= 0.8
    assert full.finite.all() and full.map.dtype == np.float16 and full.map.shape == (16, 4, 4)


def test_clean_steps_optimize_the_unaugmented_image_alone(tiny_vit):
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[1]
    units, seeds = [5, 6], [11, 12]
    clean = optimize_units(tiny_vit, layer, units, seeds, resolve_recipe("quick", steps=6, clean_steps=6),
                           torch.device("cpu"))
    # the same as one copy with identity augmentations (no shift, σ = 1, μ = 0, no noise)
    identity = resolve_recipe("quick", steps=6, clean_steps=0, batch_copies=1, jitter=0, color_shift_mean=0.0,
                              color_shift_log_std=0.0, noise_start=0.0)
    plain = optimize_units(tiny_vit, layer, units, seeds, identity, torch.device("cpu"))
    np.testing.assert_allclose(clean.pixels.numpy(), plain.pixels.numpy(), atol=1e-6)


def test_stored_activation_is_the_plain_forward_of_the_uint8_image(tiny_vit):
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[0]
    result = optimize_units(tiny_vit, layer, [3, 9], [1, 2], resolve_recipe("quick", steps=5), torch.device("cpu"))
    outputs = []
    hook = tiny_vit.model.blocks[0].mlp.act.register_forward_hook(lambda m, i, o: outputs.append(o))
    x = torch.from_numpy(result.image).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(tiny_vit.mean).view(1, 3, 1, 1), torch.tensor(tiny_vit.std).view(1, 3, 1, 1)
    with torch.no_grad():
        tiny_vit.model((x - mean) / std)
    hook.remove()
    act = outputs[0][:, 1:, :]  # drop CLS
    expected = torch.stack([act[0, :, 3], act[1, :, 9]])
    np.testing.assert_allclose(result.activation, expected.mean(1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.map.reshape(2, -1), expected.numpy(), rtol=1e-3, atol=1e-3)
