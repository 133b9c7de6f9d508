"""Sweeps at scale: build specs, parts from flags/Slurm/torchrun, finalize, kills, verify."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import build
from atlas.format import AtlasError
from atlas.log import read_logs
from atlas.verify import verify
from builder.shares import Share, detect_share, partition
from builder.pipeline import check_room, plan_tasks
from builder.spec import dump_spec, load_spec
from tests.conftest import ROOT, TINY_VIT
from tests.helpers import ENV, write_spec

def unit_data(out: Path) -> dict:
    """Every shard's datasets as bytes, by shard path."""
    data = {}
    for path in sorted((out / "shards").rglob("*.h5")):
        with h5py.File(path) as f:
            names = []
            f.visit(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) else None)
            data[path.relative_to(out).as_posix()] = {n: f[n][()].tobytes() for n in names}
    return data


# -- specs and parts -------------------------------------------------------------------------------

def test_spec_paths_resolve_and_the_resolved_copy_round_trips(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    assert spec.out == (tmp_path / "atlas").resolve() and spec.images == (tmp_path / "images").resolve()
    assert spec.recipe.steps == 2 and spec.recipe.preset == "quick" and spec.models[0].model_args == TINY_VIT
    copy = tmp_path / "copy.toml"
    copy.write_text(dump_spec(spec))
    assert dump_spec(load_spec(copy)) == dump_spec(spec)


@pytest.mark.parametrize("change, message", [
    ("[build]\nshard_unit = 8", "unknown keys \\['shard_unit'\\]"),
    ('[[models]]\nname = "x"\nsites = ["mlp"]', "unknown sites"),
    ('[[models]]\nname = "x"\nanalyses = ["spectral"]', "unknown analyses"),
    ("[atlas]\nname = 3", "name must be a string"),
    ('[atlas]\nname = "x"', "needs name and out"),
    ("not toml [", "not valid TOML"),
])
def test_bad_specs_say_what_is_wrong(tmp_path, change, message):
    path = tmp_path / "bad.toml"
    path.write_text('[atlas]\nname = "x"\nout = "o"\n' + change if "[atlas]" not in change else change)
    with pytest.raises(AtlasError, match=message):
        load_spec(path)


def test_parts_come_from_flags_then_the_launchers():
    assert detect_share(2, 5, env={"RANK": "1", "WORLD_SIZE": "4"}) == Share(2, 5, None, "--share-index/--num-shares")
    assert detect_share(env={"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0",
                            "RANK": "0", "WORLD_SIZE": "2"}) == Share(7, 8, None, "Slurm array")
    assert detect_share(env={"SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"}) \
        == Share(3, 4, 1, "Slurm srun")
    assert detect_share(env={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == Share(1, 2, 1, "torchrun")
    assert detect_share(env={}) == Share()
    with pytest.raises(AtlasError, match="together"):
        detect_share(1, None, env={})
    with pytest.raises(AtlasError, match="out of range"):
        detect_share(4, 4, env={})


def test_partition_balances_cost_not_count():
    costs = [10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    owner = partition(costs, 2)
    loads = [sum(c for c, o in zip(costs, owner) if o == p) for p in range(2)]
    assert sorted(loads) == [10, 10] and owner.count(owner[0]) == 1
    assert partition(costs, 2) == owner  # deterministic


def test_deeper_layers_cost_more(tmp_path):
    tasks = plan_tasks(load_spec(write_spec(tmp_path)))
    assert [(t.layer, t.start, t.stop) for t in tasks] == [(layer, a, a + 8) for layer in range(3) for a in (0, 8, 16)]
    by_layer = [tasks[3 * i].cost for i in range(3)]
    assert by_layer[0] < by_layer[1] < by_layer[2]


def test_plan_prints_the_work_and_the_calibrated_hours(tmp_path, capsys):
    # the quick preset's own 32 steps, 8 of them clean: the calibration shortens the recipe
    assert build.main(["plan", str(write_spec(tmp_path, steps=32)), "--num-shares", "3"]) == 0
    out = capsys.readouterr().out
    assert "9 shards, 9 pictures to make (0 already complete), 72 units" in out and "TFLOP/s achieved" in out \
        and "3 shares:" in out


def test_no_room_and_unwritable_folders_are_refused_before_work(tmp_path):
    with pytest.raises(AtlasError, match="GB free but the build needs"):
        check_room(tmp_path, 10**18)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AtlasError, match="cannot (write into|create)"):
        check_room(blocker / "atlas", 1)
    spec = write_spec(tmp_path, out=str(blocker / "atlas"))
    assert build.main(["run", str(spec)]) == 2


# -- running, parts, finalize -----------------------------------------------------------------------

@pytest.mark.slow
def test_one_process_and_four_parts_give_byte_identical_unit_data(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    assert build.main(["run", str(write_spec(one))]) == 0
    four = tmp_path / "four"
    four.mkdir()
    spec = write_spec(four)
    for i in (2, 0, 3):
        assert build.main(["run", str(spec), "--share-index", str(i), "--num-shares", "4"]) == 0
        assert not (four / "atlas/manifest.json").exists()        # not everything is done yet
    assert build.main(["run", str(spec), "--share-index", "1", "--num-shares", "4"]) == 0
    assert (four / "atlas/manifest.json").exists() and (four / "atlas/site/index.html").exists()
    a, b = unit_data(one / "atlas"), unit_data(four / "atlas")
    assert a.keys() == b.keys() and len(a) == 9
    assert a == b
    logs = read_logs(four / "atlas")
    viz = [line for line in logs if line["stage"] == "visualize"]
    assert len(viz) == 9 and {line["pid"] for line in viz} == {os.getpid()}
    assert all({"time", "host", "device", "units", "units_per_s"} <= set(line) for line in viz)
    assert verify(four / "atlas") == []


@pytest.mark.slow
def test_torchrun_with_four_cpu_processes_matches_one_process(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    one, multi = tmp_path / "one", tmp_path / "multi"
    one.mkdir()
    multi.mkdir()
    assert build.main(["run", str(write_spec(one))]) == 0
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=4", str(ROOT / "build.py"), "run",
                             str(write_spec(multi))], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert unit_data(one / "atlas") == unit_data(multi / "atlas")
    assert (multi / "atlas/site/index.html").exists() and verify(multi / "atlas") == []
    pids = {line["pid"] for line in read_logs(multi / "atlas") if line["stage"] == "visualize"}
    assert len(pids) == 4   # every rank did its share, each in its own log file
    assert len(list((multi / "atlas/logs").glob("*.jsonl"))) >= 4


@pytest.mark.slow
def test_killed_at_random_points_the_build_completes_without_recomputing(tmp_path):
    spec = write_spec(tmp_path, steps=8)
    argv = [sys.executable, "build.py", "run", str(spec)]
    out = tmp_path / "atlas"
    rng = random.Random(1)
    for _ in range(3):
        proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = unit_data(out) if (out / "shards").exists() else {}
    result = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert verify(out) == []                       # nothing corrupt, everything covered
    after = unit_data(out)
    for path, data in finished.items():            # what was finished is kept as it was (the probe adds)
        assert {name: after[path][name] for name in data} == data
    viz = [line for line in read_logs(out) if line["stage"] == "visualize"]
    assert len(viz) == 9 and len({line["shard"] for line in viz}) == 9   # no shard computed twice
    assert not list(out.rglob("*.tmp-*"))
    assert not [p for p in (out / ".locks").rglob("*") if p.is_file()]  # every lock given back or taken over


@pytest.mark.slow
def test_finalize_command_and_a_stale_lock(tmp_path):
    spec = write_spec(tmp_path)
    # the old spellings still work (hidden aliases of --share-index/--num-shares)
    assert build.main(["run", str(spec), "--shard-index", "0", "--num-shards", "2"]) == 0   # before the glossary
    assert build.main(["finalize", str(tmp_path / "atlas")]) == 2        # share 1 has not run
    assert build.main(["run", str(spec), "--shard-index", "1", "--num-shards", "2"]) == 0   # before the glossary
    (tmp_path / "atlas/site").rename(tmp_path / "old-site")
    lock = tmp_path / "atlas/.locks/finalize.3"
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": 999999999}))   # left by a dead process
    assert build.main(["finalize", str(tmp_path / "atlas")]) == 0
    assert (tmp_path / "atlas/site/index.html").exists() and not list(lock.parent.glob("finalize.*"))
    other = write_spec(tmp_path, steps=3)                                 # same out, another recipe
    assert build.main(["run", str(other)]) == 2


# -- verify ---------------------------------------------------------------------------------------

def test_verify_names_a_flipped_byte_a_truncated_and_a_deleted_shard(tmp_path, capsys):
    assert build.main(["run", str(write_spec(tmp_path))]) == 0
    out = tmp_path / "atlas"
    assert build.main(["verify", str(out)]) == 0
    shards = sorted((out / "shards").rglob("*.h5"))
    flipped, truncated, deleted = shards[1], shards[4], shards[7]
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:1000])
    deleted.unlink()
    capsys.readouterr()
    assert build.main(["verify", str(out)]) == 2
    printed = capsys.readouterr().out
    for path, words in ((flipped, "sha256"), (truncated, "size"), (deleted, "missing")):
        rel = path.relative_to(out).as_posix()
        assert any(rel in line and words in line for line in printed.splitlines()), (rel, printed)
    assert "units the spec asks for have no viz part" in printed   # coverage: the deleted shard's units


def test_verify_reports_nan_and_failed_units_by_unit_id(tmp_path, capsys):
    assert build.main(["run", str(write_spec(tmp_path))]) == 0
    out = tmp_path / "atlas"
    shard = out / "shards/vit_tiny_patch16_224/ffn/L01/U00008-00016.h5"
    with h5py.File(shard, "r+") as f:
        f["viz/activation"][3] = np.nan
        f["viz/failed"][5] = True
    problems = [str(p) for p in verify(out)]
    assert any("vit_tiny_patch16_224/ffn/L01/U0011" in p and "NaN/inf in viz/activation" in p for p in problems)
    assert any("vit_tiny_patch16_224/ffn/L01/U0013" in p and "optimization failed" in p for p in problems)
    assert any("sha256" in p for p in problems)


# -- NaN/inf during optimization --------------------------------------------------------------------

def test_nan_units_are_retried_with_a_derived_seed_and_flagged_when_it_persists(tmp_path, monkeypatch):
    from builder import schedule
    from builder.models import ModelSource, load_model
    from builder.recipe import resolve_recipe, unit_seed
    from builder.schedule import VisualizeJob, run_visualize
    lm = load_model(ModelSource("vit_tiny_patch16_224", random_init=True), **TINY_VIT)
    real = schedule.optimize_units
    calls = []

    def flaky(lm_, layer, units, seeds, *args, **kwargs):
        """Unit 3 blows up whatever its seed; unit 5 only on its first attempt."""
        calls.append(list(units))
        result = real(lm_, layer, units, seeds, *args, **kwargs)
        for unit in [3] + ([5] if len(calls) == 1 else []):
            i = units.index(unit)
            result.finite[i] = False
            result.activation[i] = np.nan
        return result

    monkeypatch.setattr(schedule, "optimize_units", flaky)
    job = VisualizeJob(out=tmp_path / "a", name="m", recipe=resolve_recipe("quick", steps=2), layers="1",
                       units="0-7", progress=False)
    run_visualize(lm, job)
    assert calls == [list(range(8)), [3, 5], [3]]
    with h5py.File(tmp_path / "a/shards/m/ffn/L01/U00000-00008.h5") as f:
        assert f["viz/retries"][()].tolist() == [0, 0, 0, 2, 0, 1, 0, 0]
        assert f["viz/failed"][()].tolist() == [False, False, False, True, False, False, False, False]
        assert f["viz/seed"][5] == unit_seed("m", "ffn", 1, 5, 0, retry=1)
        assert np.isfinite(f["viz/activation"][5]) and f["viz/seed"][0] == unit_seed("m", "ffn", 1, 0, 0)
    problems = [str(p) for p in verify(tmp_path / "a")]
    assert any("m/ffn/L01/U0003" in p and "optimization failed" in p for p in problems)


def test_plan_counts_from_shapes_on_the_meta_device(tmp_path):
    """Planning builds the models on the meta device (no weights, no memory): a ViT-H/14 plans in
    seconds, and the planned FLOPs of a layer are at most 12% above the exact count of the engine's pass."""
    from builder.forward import image_pass_flops, planned_pass_flops
    from builder.models import ModelSource, load_model
    from builder.sites import find_layers
    spec_path = tmp_path / "huge.toml"
    spec_path.write_text('[atlas]\nname = "h"\nout = "o"\n[[models]]\nname = "vit_huge_patch14_224"\nprobe = false\n')
    tasks = plan_tasks(load_spec(spec_path))
    assert sum(t.stop - t.start for t in tasks) == 32 * 5120 and all(t.cost > 0 for t in tasks)
    meta = load_model(ModelSource("vit_tiny_patch16_224", random_init=True), shapes_only=True, **TINY_VIT)
    assert next(meta.model.parameters()).device.type == "meta"
    real = load_model(ModelSource("vit_tiny_patch16_224", random_init=True), **TINY_VIT)
    layers = find_layers(real.model, "ffn", real.input_size)
    planned = planned_pass_flops(meta, find_layers(meta.model, "ffn", meta.input_size))
    for layer in layers:
        exact = image_pass_flops(real, layer)
        assert exact <= planned[layer.index] <= 1.12 * exact, (layer.index, planned[layer.index], exact)
