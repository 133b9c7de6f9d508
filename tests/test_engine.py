"""The feature-visualization engine: recipe, augmentations, objective, batch independence, fast paths."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from atlas.format import AtlasError
from builder.augment import Draw, PixelNoise, augment, clean, draw, roll_each
from builder.counter_rng import NOISE, high_words, keys, normal, seed_tensor, uniform
from builder.device import resolve_compile, resolve_precision
from builder.forward import HookForward, TruncatedViT, image_pass_flops, truncatable, unit_forward
from builder.models import ModelSource, load_model
from builder.objective import total_variation, unit_losses, unit_maps
from builder.param import Pixel
from builder.recipe import PRESETS, resolve_recipe, unit_seed
from builder.schedule import balanced_batches
from builder.sites import find_layers, run_to
from builder.visualize import Step, optimize_units, step_losses
from tests.conftest import TINY_VIT

CPU = torch.device("cpu")


# -- the recipe ------------------------------------------------------------------------------------

def test_paper_preset_optimizes_what_the_authors_runs_optimized():
    r = PRESETS["paper"]
    assert (r.steps, r.batch_copies, r.lr, r.betas, r.clean_steps) == (400, 8, 0.1, (0.5, 0.99), 0)
    # their loss: -(copies' activations).diag().mean() + 5e-5 TV = -(mean activation) / 8 + 5e-5 TV
    assert r.tv == pytest.approx(8 * 5e-5)
    assert (r.noise, r.jitter_shared, r.tv_input) == ("channel", True, "augmented")
    assert r.jitter_pixels((224, 224)) == (32, 32) and r.jitter_pixels((64, 96)) == (9, 14)
    assert r.noise_std(0) == 0.5 and r.noise_std(399) == 0.0 and r.noise_std(133) == pytest.approx(0.5 * (1 - 133 / 399))
    assert r.lr_at(0) == 0.1 and r.lr_at(200) == pytest.approx(0.05) and r.lr_at(399) < 1e-5
    assert r.loss_steps()[0] == 0 and r.loss_steps()[-1] == 399 and len(r.loss_steps()) == 16
    text = PRESETS["paper-text"]
    assert (text.tv, text.noise, text.jitter_shared, text.steps, text.batch_copies) == (5e-5, "pixel", False, 400, 8)
    quick = PRESETS["quick"]  # the same correction as paper, CPU-sized
    assert (quick.tv, quick.noise, quick.jitter_shared) == (r.tv, r.noise, r.jitter_shared)


def test_jitter_is_scaled_never_below_a_patch_unless_asked_in_pixels():
    fourier = resolve_recipe("fourier")                         # 8 px at 224: 2 px at 64, below the 8-px patch
    assert fourier.jitter_pixels((64, 64)) == (2, 2) and fourier.jitter_pixels((64, 64), (8, 8)) == (8, 8)
    assert fourier.jitter_pixels((224, 224), (16, 16)) == (16, 16)
    assert resolve_recipe("paper").jitter_pixels((224, 224), (16, 16)) == (32, 32)          # above: unchanged
    asked = resolve_recipe("fourier", jitter=2, jitter_reference=0)
    assert asked.jitter_pixels((64, 64), (8, 8)) == (2, 2)                                   # as asked
    percent = resolve_recipe("quick", jitter=25, jitter_reference=100)
    assert percent.jitter_pixels((64, 96), (8, 8)) == (16, 24) and percent.jitter_pixels((16, 16), (8, 8)) == (8, 8)
    assert resolve_recipe("quick", jitter=0).jitter_pixels((64, 64), (8, 8)) == (0, 0)       # no jitter: none


def test_overrides_and_bad_values():
    r = resolve_recipe("quick", steps=7, lr=None, tv=0.0)
    assert (r.preset, r.steps, r.tv, r.lr) == ("quick", 7, 0.0, PRESETS["quick"].lr)
    with pytest.raises(AtlasError, match="unknown preset"):
        resolve_recipe("fast")
    with pytest.raises(AtlasError, match="at least 1"):
        resolve_recipe("paper", steps=0)
    with pytest.raises(AtlasError, match="tv_input"):
        resolve_recipe("paper", tv_input="clean")
    assert PRESETS["paper"].clean_steps == 0 and resolve_recipe("quick", steps=8).clean_steps == 2
    assert resolve_recipe("quick", steps=8, clean_steps=0).clean_steps == 0
    with pytest.raises(AtlasError, match="clean"):
        resolve_recipe("paper", steps=4, clean_steps=5)
    quick = PRESETS["quick"]
    assert quick.images_per_unit() == (32 - 8) * 4 + 8 and PRESETS["paper"].images_per_unit() == 400 * 8
    assert quick.shortened(1).clean_steps == 0 and quick.shortened(16).clean_steps == 4


def test_precision_and_compile_defaults():
    assert resolve_precision("auto", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    assert resolve_compile("auto", CPU) is False and resolve_compile("on", CPU) is True
    with pytest.raises(AtlasError, match="precision"):
        resolve_precision("fp16", CPU)


def test_unit_seed_is_the_documented_sha256_derivation():
    digest = hashlib.sha256(b"vit_x/ffn/3/42/7").digest()
    assert unit_seed("vit_x", "ffn", 3, 42, 7) == int.from_bytes(digest[:8], "big") & (2**63 - 1)
    retry = hashlib.sha256(b"vit_x/ffn/3/42/7/retry1").digest()
    assert unit_seed("vit_x", "ffn", 3, 42, 7, retry=1) == int.from_bytes(retry[:8], "big") & (2**63 - 1)
    assert len({unit_seed("m", "ffn", layer, u, 0) for layer in range(4) for u in range(100)}) == 400


# -- random numbers and augmentations -------------------------------------------------------------

def _lowbias32(x: int) -> int:
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    return x ^ (x >> 16)


def test_counter_random_numbers_are_the_documented_hash():
    seeds = [5, 2**62 + 12345, unit_seed("m", "ffn", 0, 1, 0)]
    u = uniform(seed_tensor(seeds, CPU), 7, 2, (4, 5))
    for row, s in enumerate(seeds):
        lo, hi = s & 0xFFFFFFFF, s >> 32
        key = _lowbias32(lo ^ _lowbias32(hi ^ _lowbias32(16 * 7 + 2)))
        for i in (0, 6, 19):
            word = _lowbias32(hi ^ _lowbias32(key ^ i))
            assert u[row].flatten()[i].item() == ((word >> 9) + 0.5) / 2**23
    big = uniform(seed_tensor([1], CPU), 0, 0, (200_000,))
    assert 0 < big.min() and big.max() < 1 and abs(big.mean() - 0.5) < 0.005 and abs(big.std() - 12 ** -0.5) < 0.005


@pytest.mark.slow
def test_draw_ranges_shared_jitter_and_per_unit_independence():
    recipe = resolve_recipe("paper-text", batch_copies=64)
    seeds = seed_tensor([1, 2], CPU)
    d = draw(seeds, 3, recipe, (224, 224))
    assert d.shifts.shape == (128, 2) and d.shifts.abs().max() <= 32 and d.shifts.abs().max() >= 25
    assert d.offset.shape == (2, 64, 3) and d.offset.abs().max() <= 1 and (d.scale.log().abs() <= 1).all()
    assert d.pixel_noise.shape == (2, 64, 3, 224, 224)
    assert d.pixel_noise.std().item() == pytest.approx(recipe.noise_std(3), rel=0.01)
    alone = draw(seeds[1:], 3, recipe, (224, 224))
    for name in ("shifts", "scale", "offset", "pixel_noise"):  # unit 2's numbers ignore unit 1
        torch.testing.assert_close(getattr(alone, name), getattr(d, name)[64:] if name == "shifts" else getattr(d, name)[1:],
                                   rtol=0, atol=0)
    paper = draw(seeds, 3, resolve_recipe("paper"), (64, 64))
    assert paper.shifts.shape == (2, 2) and paper.pixel_noise is None  # one shift per unit, noise per channel
    assert draw(seeds, 399, resolve_recipe("paper"), (64, 64)).offset.abs().max() <= 1  # no noise at std 0
    assert not torch.equal(draw(seeds, 4, recipe, (8, 8)).offset, draw(seeds, 5, recipe, (8, 8)).offset)
    start = Pixel().init(seeds, (8, 8))
    assert start.shape == (2, 3, 8, 8) and 0 < start.min() and start.max() < 1


def test_roll_each_is_torch_roll_per_image_and_its_gradient_rolls_back():
    x = torch.rand(5, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    shifts = torch.tensor([[0, 0], [1, -2], [-3, 4], [7, 9], [-8, 1]])
    expected = torch.stack([torch.roll(x[i], tuple(shifts[i].tolist()), (1, 2)) for i in range(5)])
    torch.testing.assert_close(roll_each(x, shifts), expected, rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda t: roll_each(t, shifts), (x,))


def test_augment_is_color_shift_of_jitter_plus_noise():
    x = torch.rand(2, 3, 8, 8)
    shifts = torch.tensor([[1, 2], [0, -1], [3, 3], [-2, 0]])
    seeds = torch.tensor([5, 2**40 + 7])
    noise = PixelNoise(keys(seeds, 3, NOISE), high_words(seeds), torch.tensor(0.25))
    d = Draw(shifts, None, torch.full((2, 2, 3), 2.0), torch.full((2, 2, 3), -0.5), noise, (8, 8))
    # the noise drawn from keys is the documented stream: std * normal(seed, step, NOISE, i)
    torch.testing.assert_close(d.pixel_noise, 0.25 * normal(seeds, 3, NOISE, (2, 3, 8, 8)), rtol=0, atol=0)
    out = augment(x, d)
    torch.testing.assert_close(out[2], torch.roll(x[1], (3, 3), (1, 2)) * 2.0 - 0.5 + d.pixel_noise[1, 0])
    shared = Draw(torch.tensor([[1, 2], [3, 3]]), None, d.scale, d.offset, None)  # one shift per unit
    torch.testing.assert_close(augment(x, shared)[3], torch.roll(x[1], (3, 3), (1, 2)) * 2.0 - 0.5)


# -- the objective ---------------------------------------------------------------------------------

def test_total_variation_of_a_ramp():
    H, W, a = 6, 9, 0.1
    ramp = (torch.arange(W, dtype=torch.float64) * a).expand(1, 3, H, W)
    expected = a * (np.sqrt(H * (W - 1)) + 2 * np.sqrt((H - 1) * (W - 1)))
    assert total_variation(ramp).item() == pytest.approx(expected)
    assert total_variation(torch.full((2, 3, 5, 5), 0.7)).abs().max() == 0


def test_unit_maps_and_losses_read_only_each_units_channel():
    grid = torch.zeros(4, 2, 2, 6)
    grid[0:2, :, :, 1] = 3.0   # unit 0's copies, its channel 1
    grid[2:4, :, :, 4] = -1.0  # unit 1's copies, its channel 4
    grid[:, :, :, 0] = 100.0   # a channel nobody asked for
    maps = unit_maps(grid, torch.tensor([1, 1, 4, 4]))
    losses = unit_losses(maps, torch.tensor([[1.0, 3.0], [0.0, 0.0]]), tv_weight=0.5)
    torch.testing.assert_close(losses, torch.tensor([-3.0 + 0.5 * 2.0, 1.0]))


def test_objective_scaling_is_the_authors_loss_times_eight():
    """The engine's paper loss is 8x the authors' -(acts).diag().mean() + 5e-5 TV: the same Adam steps."""
    torch.manual_seed(0)
    maps = torch.rand(8, 4, 4) * 3
    copies = torch.rand(8, 3, 16, 16)
    ours = unit_losses(maps, total_variation(copies).view(1, 8), PRESETS["paper"].tv)
    acts = maps.mean(dim=(1, 2))
    theirs = -acts.diag().mean() + 5e-5 * total_variation(copies).mean()
    assert ours.item() == pytest.approx(8 * theirs.item(), rel=1e-6)
    text = unit_losses(maps, total_variation(copies).view(1, 8), PRESETS["paper-text"].tv)
    assert text.item() == pytest.approx(-acts.mean().item() + 5e-5 * total_variation(copies).mean().item(), rel=1e-6)


def _tv_only_loss(recipe, images, d):
    """step_losses with a forward that reads nothing: the loss is tv * TV of what TV is computed on."""
    class ReadsNothing:
        def copies(self, rolled, scale, offset, noise, units):
            return torch.zeros(scale.shape[0] * scale.shape[1], 2, 2)
    zero = ReadsNothing()
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.3, 0.25])
    noise = (d.noise.key, d.noise.hi, d.noise.std) if d.noise is not None else (None, None, None)
    return step_losses(images, d.shifts, d.affine, d.scale, d.offset, *noise, zero, torch.tensor([0] * len(images)),
                       mean, std, 1.0, recipe.tv_input == "augmented", False)


def test_tv_is_computed_on_the_copies_the_recipe_says():
    images = torch.rand(2, 3, 16, 16)
    seeds = seed_tensor([3, 4], CPU)
    noisy = lambda d: augment(images, d).view(2, -1, 3, 16, 16)  # noqa: E731
    unnoised = lambda d: augment(images, Draw(d.shifts, d.affine, d.scale, d.offset, None)).view(2, -1, 3, 16, 16)  # noqa: E731
    per_copy_tv = lambda copies: total_variation(copies.flatten(0, 1)).view(2, -1).mean(1)  # noqa: E731
    # paper: noise per copy and channel, which TV does not see; computed once per source image
    paper = resolve_recipe("paper")
    d = draw(seeds, 10, paper, (16, 16))
    torch.testing.assert_close(_tv_only_loss(paper, images, d), per_copy_tv(noisy(d)))
    # paper-text: TV of the copies with their per-pixel noise
    text = resolve_recipe("paper-text")
    d = draw(seeds, 10, text, (16, 16))
    torch.testing.assert_close(_tv_only_loss(text, images, d), per_copy_tv(noisy(d)), rtol=1e-5, atol=1e-5)
    assert (per_copy_tv(noisy(d)) > 1.2 * per_copy_tv(unnoised(d))).all()
    # tv_input = unnoised: the same copies before the noise
    before = resolve_recipe("paper-text", tv_input="unnoised")
    torch.testing.assert_close(_tv_only_loss(before, images, d), per_copy_tv(unnoised(d)))


# -- the engine ------------------------------------------------------------------------------------

def test_a_unit_alone_and_in_a_batch_of_32_gives_the_same_image(tiny_vit):
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[1]
    units = list(range(40, 72))
    seeds = [unit_seed("t", "ffn", 1, u, 0) for u in units]
    for recipe in (resolve_recipe("quick", steps=12), resolve_recipe("paper-text", steps=6)):
        batch = optimize_units(tiny_vit, layer, units, seeds, recipe, CPU)
        alone = optimize_units(tiny_vit, layer, [units[13]], [seeds[13]], recipe, CPU)
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
    result = optimize_units(tiny_vit, layer, units, seeds, plain, CPU)
    start = Pixel().init(seed_tensor(seeds, CPU), (32, 32))
    with torch.no_grad():
        (grid,) = run_to(tiny_vit.model, tiny_vit.normalize(start), [layer])
    before = grid[torch.arange(16), :, :, torch.tensor(units)].mean(dim=(1, 2)).numpy()
    assert (result.activation > before + 0.05).all()
    np.testing.assert_allclose(-result.loss[:, -1], result.activation, rtol=0.05, atol=0.02)
    # with the recipe's augmentations the loss on augmented copies (noisy step to step) falls
    full = optimize_units(tiny_vit, layer, units, seeds, resolve_recipe("quick", steps=40), CPU)
    assert (full.loss[:, -4:].mean(1) < full.loss[:, :4].mean(1)).mean() >= 0.8
    assert full.finite.all() and full.map.dtype == np.float16 and full.map.shape == (16, 4, 4)


def test_clean_steps_optimize_the_unaugmented_image_alone(tiny_vit):
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[1]
    units, seeds = [5, 6], [11, 12]
    cleaned = optimize_units(tiny_vit, layer, units, seeds, resolve_recipe("quick", steps=6, clean_steps=6), CPU)
    # the same as one copy with identity augmentations (no shift, σ = 1, μ = 0, no noise)
    identity = resolve_recipe("quick", steps=6, clean_steps=0, batch_copies=1, jitter=0, color_shift_mean=0.0,
                              color_shift_log_std=0.0, noise_start=0.0)
    plain = optimize_units(tiny_vit, layer, units, seeds, identity, CPU)
    np.testing.assert_allclose(cleaned.pixels.numpy(), plain.pixels.numpy(), atol=1e-6)
    assert clean(2, CPU).copies == 1


def test_stored_activation_is_the_plain_forward_of_the_uint8_image(tiny_vit):
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[0]
    result = optimize_units(tiny_vit, layer, [3, 9], [1, 2], resolve_recipe("quick", steps=5), CPU)
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


def test_bf16_runs_on_cpu_and_stores_the_fp32_activation(tiny_vit):
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[1]
    recipe = resolve_recipe("quick", steps=8)
    bf16 = optimize_units(tiny_vit, layer, [1, 2], [1, 2], recipe, CPU, "bf16")
    assert bf16.finite.all() and tiny_vit.cast(torch.bfloat16, CPU).blocks[0].mlp.fc1.weight.dtype == torch.bfloat16
    assert tiny_vit.model.blocks[0].mlp.fc1.weight.dtype == torch.float32  # the fp32 model is untouched
    again = optimize_units(tiny_vit, layer, [1, 2], [1, 2], recipe, CPU, "fp32")
    assert np.abs(bf16.activation - again.activation).max() < 0.5  # same recipe, lower precision


# -- the truncated forward ---------------------------------------------------------------------------

VIT_FAMILY = {
    "vit": ("vit_tiny_patch16_224", {}),
    "registers": ("vit_tiny_patch16_224", {"reg_tokens": 2}),
    "no_embed_class": ("vit_tiny_patch16_224", {"no_embed_class": True, "init_values": 0.1}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}),
    "clip_quickgelu": ("vit_base_patch16_clip_quickgelu_224", {}),
}


@pytest.mark.parametrize("family", list(VIT_FAMILY))
def test_truncated_forward_equals_the_hook_path(family):
    name, extra = VIT_FAMILY[family]
    lm = load_model(ModelSource(name, random_init=True), **{**TINY_VIT, **extra})
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    units = torch.tensor([3, 77])
    layers = find_layers(lm.model, "ffn", lm.input_size)
    model = lm.model.double()
    for layer in layers:
        assert truncatable(model, layer) and TruncatedViT(model, layer).per_channel_embedding
        fast, hooked = TruncatedViT(model, layer), HookForward(model, layer)
        a = x.clone().requires_grad_(True)
        b = x.clone().requires_grad_(True)
        ma, mb = fast(a, units), hooked(b, units)
        torch.testing.assert_close(ma, mb, rtol=1e-10, atol=1e-10)
        (ma * torch.linspace(0, 1, ma.numel(), dtype=torch.float64).view_as(ma)).sum().backward()
        (mb * torch.linspace(0, 1, mb.numel(), dtype=torch.float64).view_as(mb)).sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-10)
        # copies given per source image: the per-channel patch embedding equals building the copies
        rolled = torch.rand(2, 1, 3, 32, 32, dtype=torch.float64, requires_grad=True)
        scale, offset = torch.rand(2, 3, 3, dtype=torch.float64) + 0.5, torch.randn(2, 3, 3, dtype=torch.float64)
        fast_maps = fast.copies(rolled, scale, offset, None, units)
        slow_maps = hooked.copies(rolled, scale, offset, None, units)
        torch.testing.assert_close(fast_maps, slow_maps, rtol=1e-10, atol=1e-10)
        (g_fast,) = torch.autograd.grad(fast_maps.sum(), rolled)
        (g_slow,) = torch.autograd.grad(slow_maps.sum(), rolled)
        torch.testing.assert_close(g_fast, g_slow, rtol=1e-9, atol=1e-10)
    lm.model.float()


def test_the_hook_path_serves_other_sites_and_models(tiny_vit):
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[1]
    assert isinstance(unit_forward(tiny_vit, layer, torch.float32, CPU), TruncatedViT)
    assert isinstance(unit_forward(tiny_vit, layer, torch.float32, CPU, truncate=False), HookForward)
    q = find_layers(tiny_vit.model, "q", tiny_vit.input_size)[1]
    assert isinstance(unit_forward(tiny_vit, q, torch.float32, CPU), HookForward)


def test_engine_pass_flops_count_no_weight_gradients(tiny_vit):
    layers = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)
    flops = [image_pass_flops(tiny_vit, layer, CPU) for layer in layers]
    assert flops[0] < flops[1] < flops[2]
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    with FlopCounterMode(display=False) as forward_only, torch.no_grad():
        TruncatedViT(tiny_vit.model, layers[2])(tiny_vit.normalize(x), torch.zeros(1, dtype=torch.long))
    # backward to the pixels costs about one forward (attention's products twice): not the 2x of weight grads
    assert 1.8 * forward_only.get_total_flops() <= flops[2] <= 2.6 * forward_only.get_total_flops()


def test_balanced_batches():
    assert balanced_batches(256, 115) == [86, 85, 85]
    assert balanced_batches(10, 20) == [10] and balanced_batches(0, 5) == []
    assert sum(balanced_batches(1000, 7)) == 1000 and max(balanced_batches(1000, 7)) <= 7


@pytest.mark.slow
def test_compiled_step_equals_the_eager_step(tiny_vit):
    """torch.compile of the step (truncated forward, augmentations, TV) gives the eager engine's images."""
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[1]
    # 5-pixel shifts as asked: the floor of one patch would roll this 32-pixel image by half of it, where
    # Adam's first steps amplify float differences between the two graphs past 1e-4
    recipe = resolve_recipe("quick", steps=4, jitter=5, jitter_reference=0)
    eager = optimize_units(tiny_vit, layer, [1, 2, 3], [1, 2, 3], recipe, CPU)
    compiled = optimize_units(tiny_vit, layer, [1, 2, 3], [1, 2, 3], recipe, CPU, step=Step(unit_forward(tiny_vit, layer, torch.float32, CPU), compile=True, device=CPU))
    assert (eager.pixels - compiled.pixels).abs().max() <= 1e-4
    np.testing.assert_allclose(eager.activation, compiled.activation, rtol=1e-4, atol=1e-5)
    hooked = optimize_units(tiny_vit, layer, [1, 2, 3], [1, 2, 3], recipe, CPU,
                            forward=unit_forward(tiny_vit, layer, torch.float32, CPU, truncate=False))
    assert (eager.pixels - hooked.pixels).abs().max() <= 1e-4


def test_every_preset_has_its_help_line():
    from builder.recipe import PRESET_HELP, PRESETS
    assert list(PRESET_HELP) == list(PRESETS)


def test_l1_total_variation_is_the_mean_absolute_difference():
    from builder.objective import channel_total_variation
    x = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    a = x.numpy()
    want = sum(np.abs(d).reshape(2, 3, -1).mean(-1) for d in (a[..., :, 1:] - a[..., :, :-1], a[..., 1:, :] - a[..., :-1, :],
                                                              a[..., 1:, 1:] - a[..., :-1, :-1], a[..., 1:, :-1] - a[..., :-1, 1:]))
    np.testing.assert_allclose(channel_total_variation(x, "l1").numpy(), want, rtol=1e-6)
    flat, edge = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    edge[..., :, 4:] = 1                                       # one sharp edge: l1 charges its height, not its square
    assert channel_total_variation(edge, "l1").item() > channel_total_variation(flat, "l1").item() == 0
