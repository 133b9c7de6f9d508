"""A second picture per unit: the Fourier parametrization, its own shard part, the reader and the website."""
from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest
import torch

import atlas
import build
from atlas.format import AtlasError
from builder.counter_rng import seed_tensor
from builder.param import Fourier, Pixel
from builder.recipe import PRESETS, resolve_recipe, unit_seed
from builder.sites import find_layers
from builder.visualize import optimize_units
from tests.conftest import TINY_MODEL

CPU = torch.device("cpu")


def test_fourier_parametrization_is_lucents():
    f = Fourier((16, 24))
    params = f.init(seed_tensor([3, 4], CPU), (16, 24))
    assert params.shape == (2, 3, 16, 13, 2) and abs(params.std().item() - 0.01) < 0.002
    image = f.image(params)
    assert image.shape == (2, 3, 16, 24) and 0 < image.min() and image.max() < 1
    # a zero spectrum is mid-grey; a spectrum's DC term moves the whole image through the colour matrix
    zero = torch.zeros(1, 3, 16, 13, 2)
    torch.testing.assert_close(f.image(zero), torch.full((1, 3, 16, 24), 0.5))
    dc = zero.clone()
    dc[0, 0, 0, 0, 0] = 1.0
    shift = f.image(dc)[0].mean(dim=(1, 2)) - 0.5
    assert (shift > 0).all()                                   # the first decorrelated channel is brightness
    assert Pixel().image(params) is params


def test_fourier_preset_and_batch_invariance(tiny_vit):
    r = PRESETS["fourier"]
    assert (r.parametrization, r.tv, r.noise_start, r.color_shift_log_std, r.jitter_shared) == ("fourier", 0, 0, 0, False)
    assert r.affine and r.rotate == 10 and r.scale_jitter == 0.1 and r.lr == 0.05
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[1]
    units = list(range(10, 26))
    seeds = [unit_seed("t", "ffn", 1, u, 0) for u in units]
    recipe = resolve_recipe("fourier", steps=6)
    batch = optimize_units(tiny_vit, layer, units, seeds, recipe, CPU)
    alone = optimize_units(tiny_vit, layer, [units[5]], [seeds[5]], recipe, CPU)
    assert (batch.pixels[5] - alone.pixels[0]).abs().max() <= 1e-5
    assert np.abs(batch.loss[5] - alone.loss[0]).max() <= 1e-5


def test_fourier_optimization_raises_the_activation(tiny_vit):
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[2]
    units = list(range(8))
    seeds = [unit_seed("t", "ffn", 2, u, 0) for u in units]
    short = optimize_units(tiny_vit, layer, units, seeds, resolve_recipe("fourier", steps=1), CPU)
    longer = optimize_units(tiny_vit, layer, units, seeds, resolve_recipe("fourier", steps=60, lr=0.1), CPU)
    assert np.median(longer.activation - short.activation) > 0.05


def _viz_bytes(out) -> dict:
    found = {}
    for path in sorted((out / "shards").rglob("*.h5")):
        with h5py.File(path) as f:
            found[path.name] = hashlib.sha256(b"".join(f[f"viz/{n}"][()].tobytes()
                                                       for n in ("image", "activation", "map", "seed", "loss"))).hexdigest()
    return found


def test_visualize_preset_fourier_adds_its_picture_without_touching_the_papers(tmp_path):
    out = tmp_path / "atlas"
    common = [*TINY_MODEL, "--steps", "3", "--layers", "1", "--units", "0-9", "--shard-units", "8", "--out", str(out)]
    assert build.main(["visualize", "--preset", "quick", *common]) == 0
    before = _viz_bytes(out)
    assert build.main(["visualize", "--preset", "fourier", *common]) == 0
    assert _viz_bytes(out) == before
    a = atlas.open(out)
    u = a.unit("vit_tiny_patch16_224", 1, 3)
    assert u.pictures == ["viz", "fourier"]
    viz, fourier = u.picture("viz"), u.picture("fourier")
    assert viz.recipe["preset"] == "quick" and fourier.recipe["parametrization"] == "fourier"
    assert np.array_equal(viz.image, u.image) and fourier.image.shape == u.image.shape
    assert not np.array_equal(viz.image, fourier.image)
    with pytest.raises(AtlasError, match="no picture part"):
        u.picture("maco")
    assert build.main(["verify", str(out)]) == 0
    # again: nothing to do (the part is there)
    assert build.main(["visualize", "--preset", "fourier", *common]) == 0


def test_an_atlas_of_format_1_0_still_opens(tmp_path):
    """A shard as format 1.0 wrote it: the recipe only in the shard attributes, no group attributes."""
    out = tmp_path / "atlas"
    assert build.main(["visualize", *TINY_MODEL, "--preset", "quick", "--steps", "2", "--layers", "0",
                       "--units", "0-7", "--out", str(out)]) == 0
    for path in (out / "shards").rglob("*.h5"):
        with h5py.File(path, "r+") as f:
            f.attrs["format_version"] = "1.0"
            for key in ("recipe", "seed"):
                del f["viz"].attrs[key]
    u = atlas.open(out).unit("vit_tiny_patch16_224", 0, 2)
    assert u.pictures == ["viz"] and u.picture().recipe["preset"] == "quick" and u.activation == u.picture().activation


def test_the_unit_record_holds_both_pictures(small_atlas):
    from atlas.website.packs import read_unit
    out, _ = small_atlas
    header, meta, _ = read_unit(out / "site", "vit_tiny_patch16_224", "ffn", 0, 3)
    assert [p["part"] for p in meta["pictures"]] == ["viz", "fourier"]
    assert set(header["tiles"]) == {"viz", "fourier"} and set(header["layer"]["parts"]) == {"viz", "fourier"}
    layer = (out / "site" / "vit_tiny_patch16_224" / "ffn" / "L00" / "index.html").read_text()
    assert 'id="picture-fourier"' in layer and layer.count('data-parts="viz fourier"') == 40
    other = (out / "site" / "vit_tiny_patch16_224" / "ffn" / "L01" / "index.html").read_text()
    assert "picture-switch" not in other                       # layer 1 has the paper's picture only


@pytest.mark.slow
def test_a_spec_builds_both_pictures_and_verify_covers_them(tmp_path):
    from atlas.verify import verify
    from tests.helpers import write_spec
    spec = write_spec(tmp_path, extra='pictures = ["fourier"]')
    spec.write_text(spec.read_text().replace("[dataset]", "[pictures.fourier]\nsteps = 2\n\n[dataset]"))
    assert build.main(["run", str(spec)]) == 0
    out = tmp_path / "atlas"
    for shard in (out / "shards").rglob("*.h5"):
        with h5py.File(shard) as f:
            assert "viz" in f and "fourier" in f and "topk" in f
            assert '"parametrization": "fourier"' in f["fourier"].attrs["recipe"]
    assert verify(out) == []
    victim = next((out / "shards").rglob("*.h5"))
    with h5py.File(victim, "r+") as f:
        del f["fourier"]
    from atlas.manifest import write_manifest
    write_manifest(out)
    assert any("fourier" in str(p) for p in verify(out))       # coverage names the missing picture
    bad = tmp_path / "bad.toml"
    bad.write_text(spec.read_text().replace('[pictures.fourier]', '[pictures.fourier]\npreset = "quick"'))
    assert build.main(["plan", str(bad), "--no-calibrate"]) == 2
