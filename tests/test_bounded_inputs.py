"""Inputs are bounded before they are read or allocated, and every number is checked where it is read
(issue 29, cases 4 and 6-9, 13): hostile SAE checkpoints, selections and share counts, SAE configs,
train-sae's flags, non-finite values in an atlas, export config names. Peak memory of a bounded input is
measured in a child process against a normal input of the same kind."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import h5py
import pytest
import torch
from safetensors.torch import save_file

import atlas
from atlas.format import AtlasError
from atlas.manifest import write_manifest
from builder.sae import load_sae
from tests.conftest import ROOT, TINY_MODEL
from tests.helpers import ENV, assert_refused, image_folder, run_cli, write_spec
from tests.test_sae import D, LAYER, LATENTS, saelens, saev, weights


def child_peak(code: str) -> tuple[int, str]:
    """Run ``code`` in a fresh Python (the repository on its path); (its peak resident memory in bytes, the
    last line before it: "ok", or an AtlasError's message, as the command line prints it)."""
    script = ("import resource, sys\nsys.path.insert(0, %r)\nfrom atlas.format import AtlasError\ntry:\n"
              "%s\n    print('ok')\nexcept AtlasError as e:\n    print('AtlasError:', e)\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
              % (str(ROOT), "\n".join("    " + line for line in code.splitlines())))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=300)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and lines, out.stderr[-2000:]
    return int(lines[-1]), lines[-2]


def _inflating_zip(data: bytes, record_suffix: str, size: int) -> bytes:
    """A torch zip checkpoint whose record ``...record_suffix`` is replaced by ``size`` zero bytes, deflated
    (a few MB on disk; torch would inflate it before checking its size)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            if info.filename.endswith(record_suffix):
                inflating = zipfile.ZipInfo(info.filename)
                inflating.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(inflating, "w", force_zip64=True) as f:
                    for _ in range(size // (1 << 24)):
                        f.write(bytes(1 << 24))
            else:
                zout.writestr(info, zin.read(info.filename))
    return out.getvalue()


@pytest.mark.slow
def test_hostile_checkpoints_stay_within_half_again_a_normal_load(tmp_path):
    """Case 4: a saev header line of 1 GiB (a sparse file), a ViT-Prisma record inflating to 1.5 GiB, a
    SAELens cfg.json that is /dev/zero: each refused in one line, at under 1.5x the peak of a normal load."""
    normal_saev, _ = saev(tmp_path / "normal-saev" / "sae.pt")
    big_header = tmp_path / "header" / "sae.pt"
    big_header.parent.mkdir()
    with open(big_header, "wb") as f:
        f.write(b'{"schema": 2, "pad": "')
        f.seek(2**30)
        f.write(b'"}\n' + normal_saev.read_bytes().split(b"\n", 1)[1])
    prisma = tmp_path / "prisma"
    prisma.mkdir()
    (prisma / "config.json").write_text(json.dumps({"d_in": D, "d_sae": LATENTS, "hook_point_layer": LAYER}))
    buf = io.BytesIO()
    torch.save(weights(0), buf)
    torch.save(weights(0), prisma / "normal.pt")
    hostile_prisma = tmp_path / "hostile-prisma"
    hostile_prisma.mkdir()
    (hostile_prisma / "config.json").write_text((prisma / "config.json").read_text())
    (hostile_prisma / "weights.pt").write_bytes(_inflating_zip(buf.getvalue(), "data/0", 3 * 2**29))
    assert (hostile_prisma / "weights.pt").stat().st_size < 5 * 2**20
    saelens_ok, _ = saelens(tmp_path / "saelens")
    zero = tmp_path / "zero"
    zero.mkdir()
    (zero / "sae_weights.safetensors").write_bytes((saelens_ok / "sae_weights.safetensors").read_bytes())
    (zero / "cfg.json").symlink_to("/dev/zero")
    cases = [(f"load_sae({str(normal_saev)!r})", f"load_sae({str(big_header)!r})", "first line"),
             (f"load_sae({str(prisma / 'normal.pt')!r})", f"load_sae({str(hostile_prisma)!r})", "inflate"),
             (f"load_sae({str(saelens_ok)!r})", f"load_sae({str(zero)!r}, 'saelens')", "larger than")]
    for normal, hostile, why in cases:
        peak, line = child_peak(f"from builder.sae import load_sae\n{normal}")
        assert line == "ok", line
        hostile_peak, line = child_peak(f"from builder.sae import load_sae\n{hostile}")
        assert line.startswith("AtlasError:") and why in line, line
        assert hostile_peak < 1.5 * peak, (hostile, hostile_peak / 2**20, peak / 2**20)


def test_hostile_checkpoints_are_refused_in_one_line(tmp_path):
    """Case 4 through the command line (the memory bound is the slow test above)."""
    path, _ = saev(tmp_path / "ok" / "sae.pt")
    long = tmp_path / "long" / "sae.pt"
    long.parent.mkdir()
    long.write_bytes(b'{"schema": 2, "pad": "' + b"x" * (2 << 20) + b'"}\n' + path.read_bytes().split(b"\n", 1)[1])
    junk = tmp_path / "junk" / "sae.pt"                       # junk between the header and the archive
    junk.parent.mkdir()
    head, body = path.read_bytes().split(b"\n", 1)
    junk.write_bytes(head + b"\n" + bytes(4096) + body)
    for bad in (long, junk):
        assert_refused(run_cli("visualize", *TINY_MODEL, "--site", "sae", "--sae", str(bad), "--layers", str(LAYER),
                               "--out", str(tmp_path / "atlas")), str(bad.parent.name))
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({"d_in": D, "d_sae": LATENTS, "hook_point_layer": LAYER}))
    torch.save(weights(0), legacy / "weights.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(AtlasError, match="legacy format"):
        load_sae(legacy)


@pytest.mark.slow
def test_selection_and_share_typos_stay_within_half_again_a_normal_command(tmp_path):
    """Case 6: --units 0-30000000 and --num-shares 99999999999 are checked against the real counts first."""
    out = tmp_path / "atlas"
    run = "import build\nassert build.main(%s) in (0, 2)"
    normal = ["visualize", *TINY_MODEL, "--preset", "quick", "--steps", "1", "--layers", "0", "--units", "0-3",
              "--out", str(out)]
    peak, _ = child_peak(run % normal)
    hostile = normal[:-4] + ["--units", "0-30000000", "--out", str(out)]
    hostile_peak, _ = child_peak(run % hostile)
    assert hostile_peak < 1.5 * peak, (hostile_peak / 2**20, peak / 2**20)
    assert_refused(run_cli(*hostile), "out of range")
    spec = write_spec(tmp_path / "spec", steps=1)
    peak, _ = child_peak(run % ["plan", str(spec), "--no-calibrate", "--num-shares", "2"])
    hostile_peak, line = child_peak(run % ["plan", str(spec), "--no-calibrate", "--num-shares", "99999999999"])
    assert line == "ok" and hostile_peak < 1.5 * peak, (hostile_peak / 2**20, peak / 2**20)


def test_share_counts_beyond_the_tasks_get_no_task():
    from builder.shares import partition
    assert partition([3.0, 1.0, 2.0], 99999999999) == [0, 2, 1] == partition([3.0, 1.0, 2.0], 3)


# -- case 7: SAE configurations ----------------------------------------------------------------------

def _saelens_with(tmp_path, name: str, cfg_edit=None, state_edit=None, architecture="topk"):
    folder, _ = saelens(tmp_path / name, 0, architecture, k=5)
    if cfg_edit:
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg_edit(cfg)
        (folder / "cfg.json").write_text(json.dumps(cfg))
    if state_edit:
        from safetensors.torch import load_file
        state = load_file(str(folder / "sae_weights.safetensors"))
        state_edit(state)
        save_file(state, str(folder / "sae_weights.safetensors"))
    return folder


@pytest.mark.parametrize("case, edit", [
    ("k Infinity", dict(cfg_edit=lambda c: c.update(k=float("inf")))),
    ("k 1e400", dict(cfg_edit=lambda c: c.update(k=1e400))),
    ("k 1.5", dict(cfg_edit=lambda c: c.update(k=1.5))),
    ("k true", dict(cfg_edit=lambda c: c.update(k=True))),
    ("hook_layer Infinity", dict(cfg_edit=lambda c: (c["metadata"].pop("hook_name"), c.update(hook_layer=float("inf"))))),
    ("W_enc 0-D", dict(state_edit=lambda s: s.update(W_enc=torch.tensor(1.0)))),
    ("W_enc 1-D", dict(state_edit=lambda s: s.update(W_enc=torch.ones(D)))),
    ("W_enc 3-D", dict(state_edit=lambda s: s.update(W_enc=torch.ones(D, LATENTS, 2)))),
    ("no latents", dict(architecture="standard",
                        state_edit=lambda s: s.update(W_enc=torch.ones(D, 0), b_enc=torch.ones(0), W_dec=torch.ones(0, D)))),
    ("NaN threshold", dict(architecture="jumprelu", state_edit=lambda s: s.update(threshold=torch.full((LATENTS,), float("nan"))))),
])
def test_sae_configs_that_ended_in_a_traceback_or_were_misread_are_one_line(case, edit, tmp_path):
    folder = _saelens_with(tmp_path, "ckpt", **edit)
    with pytest.raises(AtlasError):
        load_sae(folder)
    assert_refused(run_cli("visualize", *TINY_MODEL, "--site", "sae", "--sae", str(folder), "--layers", str(LAYER),
                           "--units", "0-3", "--out", str(tmp_path / "atlas")), "ckpt")


def test_saev_top_k_overflow_and_complex_weights_are_one_line(tmp_path):
    path, _ = saev(tmp_path / "top" / "sae.pt")
    head, body = path.read_bytes().split(b"\n", 1)
    header = json.loads(head)
    header["cfg"]["activation"]["params"]["top_k"] = 1e400
    path.write_bytes(json.dumps(header).encode() + b"\n" + body)
    with pytest.raises(AtlasError, match="top_k"):
        load_sae(path)
    folder = tmp_path / "complex"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"d_in": D, "d_sae": LATENTS, "hook_point_layer": LAYER}))
    w = weights(0)
    w["W_enc"] = w["W_enc"].to(torch.complex64)
    torch.save(w, folder / "weights.pt")
    with pytest.raises(AtlasError, match="real numbers"):
        load_sae(folder)


# -- case 8: train-sae takes visualize's checks ------------------------------------------------------

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("bounded-images"), ("a", "b"), 4, 32)


@pytest.mark.parametrize("flags, needle", [
    (["--lr", "nan"], "--lr"), (["--batch-size", "0"], "--batch-size"), (["--batch-tokens", "-1"], "--batch-tokens"),
    (["--batch-tokens", "0"], "--batch-tokens"), (["--steps", "0"], "--steps"), (["--device", "bogus"], "--device"),
    (["--l1", "nan", "--kind", "relu"], "--l1"), (["--latents", "0"], "--latents"),
])
def test_train_sae_checks_its_numbers_before_it_trains(flags, needle, images, tmp_path):
    out = tmp_path / "sae"
    assert_refused(run_cli("train-sae", *TINY_MODEL, "--images", str(images), "--layers", str(LAYER), *flags,
                           "--workers", "0", "--out", str(out)), needle)
    assert not out.exists()


def test_train_sae_without_a_gpu_and_into_someone_elses_folder(images, tmp_path):
    if not torch.cuda.is_available():
        assert_refused(run_cli("train-sae", *TINY_MODEL, "--images", str(images), "--layers", str(LAYER), "--device",
                               "cuda", "--out", str(tmp_path / "sae")), "cuda")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "cfg.json").write_text('{"my": "settings"}')
    assert_refused(run_cli("train-sae", *TINY_MODEL, "--images", str(images), "--layers", str(LAYER), "--steps", "5",
                           "--workers", "0", "--out", str(mine)), "holds no SAE")
    assert (mine / "cfg.json").read_text() == '{"my": "settings"}'
    spec = write_spec(tmp_path / "spec", steps=1)
    assert run_cli("run", str(spec))[0] == 0
    a = tmp_path / "spec" / "atlas"
    assert_refused(run_cli("train-sae", *TINY_MODEL, "--images", str(images), "--layers", str(LAYER), "--steps", "5",
                           "--workers", "0", "--out", str(a)), "is an atlas")
    assert run_cli("verify", str(a))[0] == 0


# -- case 9: numbers that are not finite ------------------------------------------------------------

def test_non_finite_values_in_flags_and_in_an_atlas(images, tmp_path):
    out = tmp_path / "atlas"
    base = ["visualize", *TINY_MODEL, "--preset", "quick", "--steps", "2", "--layers", "0", "--units", "0-3"]
    assert_refused(run_cli(*base, "--tv", "inf", "--out", str(out)), "tv", "finite")
    assert_refused(run_cli(*base, "--lr", "nan", "--out", str(out)), "lr", "finite")
    assert not (out / "shards").exists()
    path, _ = saelens(tmp_path / "ckpt", architecture="topk", k=5)
    common = [*TINY_MODEL, "--site", "sae", "--sae", str(path), "--out", str(out)]
    assert run_cli("visualize", *common, "--preset", "quick", "--steps", "2", "--units", "0-3")[0] == 0
    assert run_cli("visualize", *TINY_MODEL, "--preset", "quick", "--steps", "2", "--layers", "0", "--units", "0-3",
                   "--out", str(out))[0] == 0
    shard = next((out / "shards" / "vit_tiny_patch16_224" / "sae-ckpt").rglob("*.h5"))
    with h5py.File(shard, "r+") as f:
        record = json.loads(f.attrs["sae"])
        record["k"] = float("nan")
        f.attrs["sae"] = json.dumps(record)              # Python's json writes NaN: a self-consistent hostile atlas
    write_manifest(out)
    rc, stdout, _ = run_cli("verify", str(out))
    assert rc == 2 and "not finite" in stdout, stdout
    rc, stdout, err = run_cli("render", str(out))
    assert rc == 0 and "Traceback" not in err and "leaving out" in stdout, (stdout, err)
    with atlas.open(out) as a:
        assert a.unit("vit_tiny_patch16_224", 0, 1).activation is not None      # the rest of the atlas renders


# -- case 13: export config names ------------------------------------------------------------------------

def test_export_config_names_are_unique_by_construction(tmp_path):
    pytest.importorskip("pyarrow")
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "atlas"
    path, _ = saelens(tmp_path / "ffn")                   # an SAE named "ffn": site sae-ffn
    assert run_cli("visualize", *TINY_MODEL, "--site", "sae", "--sae", str(path), "--preset", "quick", "--steps", "1",
                   "--units", "0-3", "--name", "m", "--out", str(out))[0] == 0
    assert run_cli("visualize", *TINY_MODEL, "--preset", "quick", "--steps", "1", "--layers", "0", "--units", "0-3",
                   "--name", "m-sae", "--out", str(out))[0] == 0
    assert run_cli("export", str(out), "--out", str(tmp_path / "export"))[0] == 0
    import yaml
    header = yaml.safe_load((tmp_path / "export" / "README.md").read_text().split("---\n")[1])
    names = [c["config_name"] for c in header["configs"]]
    assert len(names) == len(set(names)) and {"m.sae-ffn", "m-sae.ffn"} <= set(names)
    for name in ("m.sae-ffn", "m-sae.ffn"):
        ds = datasets.load_dataset(str(tmp_path / "export"), name, split="train")
        assert {(r["model"], r["site"]) for r in ds} == {tuple(name.split("."))}
