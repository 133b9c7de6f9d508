"""The GPU path without a GPU (issue 21): launchers and devices, compile graphs and fallbacks, the
batch trial, what each precision means, the casts, calibration, and the GPU scripts' dry runs."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

import h5py
import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounter

import build
from atlas.format import AtlasError
from atlas.log import read_logs
from builder.augment import PixelNoise, draw
from builder.counter_rng import seed_tensor
from builder.device import exact_fp32, resolve_precision
from builder.forward import unit_forward
from builder.shares import Share, detect_share, share_device
from builder.recipe import resolve_recipe
from builder.sites import find_layers
from builder.visualize import Step, optimize_units
from tests.conftest import ROOT, TINY_MODEL, TINY_VIT

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
BEIT = ["--model", "beit_base_patch16_224", "--random-init", "--model-args", json.dumps(TINY_VIT)]


# -- launchers and devices -------------------------------------------------------------------------

SBATCH = {"SLURM_JOB_ID": "9", "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0"}


@pytest.mark.parametrize("env, share", [
    # torchrun inside an sbatch script: the batch step's SLURM_PROCID=0 is not the rank
    ({**SBATCH, "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}, Share(3, 4, 3, "torchrun")),
    # a Slurm array job whose every task runs torchrun: task-major numbering over all processes
    ({**SBATCH, "SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "3",
      "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, Share(3, 6, 1, "Slurm array x torchrun")),
    # a plain array job, one process per task
    ({**SBATCH, "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, Share(2, 4, 0, "Slurm array")),
    # srun: SLURM_PROCID counts inside a job step
    ({**SBATCH, "SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"},
     Share(5, 8, 1, "Slurm srun")),
    # the batch script itself, no srun and no torchrun: the whole build
    (SBATCH, Share()),
])
def test_the_share_comes_from_the_launcher_that_started_the_process(env, share):
    assert detect_share(env=env) == share
    # the flags win over every launcher
    assert detect_share(1, 2, env=env) == Share(1, 2, None, "--share-index/--num-shares")


def test_a_launcher_value_that_is_not_a_number_is_one_line():
    with pytest.raises(AtlasError, match="RANK='x'"):
        detect_share(env={"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_the_local_rank_picks_the_gpu_and_makes_it_current(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert share_device(CUDA, Share(5, 8, 5, "torchrun")) == torch.device("cuda", 1)
    assert share_device(torch.device("cuda", 2), Share(5, 8, 5, "torchrun")) == torch.device("cuda", 2)
    assert share_device(CPU, Share(5, 8, 5, "torchrun")) == CPU
    assert chosen == [torch.device("cuda", 1), torch.device("cuda", 2)]


def test_finalize_probes_every_site_on_the_parts_device(tmp_path, monkeypatch):
    from tests.helpers import write_spec
    import atlas.website
    import builder.analyses
    import builder.probe
    from builder.pipeline import finalize
    from builder.spec import load_spec

    jobs = []
    monkeypatch.setattr(builder.probe, "run_probe", lambda lm, index, job, command: jobs.append(job))
    monkeypatch.setattr(builder.analyses, "run_analysis", lambda *a, **k: None)
    monkeypatch.setattr(atlas.website, "render", lambda *a, **k: None)
    spec = load_spec(write_spec(tmp_path, extra='sites = ["ffn", "attn"]\nprobe = true'))
    finalize(spec, "test", tasks=[], progress=False, device=torch.device("cuda", 3))
    assert [(job.site, job.device) for job in jobs] == [("ffn", "cuda:3"), ("attn", "cuda:3")]


# -- the oldest torch, and the exception classes it has --------------------------------------------

def test_the_torch_floor_has_every_class_the_builder_catches():
    """torch.OutOfMemoryError (the halving, the compile fallback's pass-through) exists from torch 2.5;
    Dynamo's TorchDynamoException, which wraps every backend failure, longer."""
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(re.fullmatch(r"torch>=(\d+)\.(\d+).*", p) for p in pins if p.startswith("torch>="))
    assert (int(floor[1]), int(floor[2])) >= (2, 5)
    assert issubclass(torch.OutOfMemoryError, RuntimeError)
    assert issubclass(torch._dynamo.exc.BackendCompilerFailed, torch._dynamo.exc.TorchDynamoException)


# -- compiled graphs ---------------------------------------------------------------------------------

class GraphRecorder(CompileCounter):
    """A torch.compile backend that counts graphs and keeps their ops (runs them eagerly: no codegen)."""

    def __init__(self):
        super().__init__()
        self.targets = set()

    def __call__(self, gm, example_inputs):
        self.targets.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return super().__call__(gm, example_inputs)


@pytest.fixture
def graphs(monkeypatch):
    """Every torch.compile in the test compiles with a GraphRecorder (the mode is Inductor's only)."""
    recorder = GraphRecorder()
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, **kw: real(fn, **{**kw, "backend": recorder}))
    torch._dynamo.utils.counters.clear()
    yield recorder
    torch._dynamo.reset()


def _visualize(tmp_path, name, model, steps, units, batch, preset="quick"):
    out = tmp_path / name
    assert build.main(["visualize", *model, "--preset", preset, "--steps", str(steps), "--layers", "0-2",
                       "--units", units, "--batch-units", str(batch), "--compile", "on", "--device", "cpu",
                       "--out", str(out)]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("steps, units, batch", [(4, "0-3", 2), (9, "0-4", 2)])
def test_a_compiled_layer_takes_two_graphs_for_any_steps_and_ragged_batches(tmp_path, graphs, steps, units, batch):
    """quick has clean steps: one graph for the augmented steps and one for the clean ones, per layer;
    5 units in batches of 2 are padded (2 + 2 + 1 -> three batches of 2), retries would be too."""
    out = _visualize(tmp_path, "vit", TINY_MODEL, steps, units, batch)
    assert graphs.frame_count == 3 * 2
    assert not torch._dynamo.utils.counters["graph_break"]
    assert not torch._dynamo.utils.counters["recompiles"]
    # the per-pixel noise is drawn inside the compiled graph (paper-text below); here the step's parts
    assert any("addmm" in t or "bmm" in t for t in graphs.targets)
    logs = [line for line in read_logs(out) if line.get("stage") == "visualize"]
    assert logs and {line["compile"] for line in logs} == {"compiled"}
    with h5py.File(next((out / "shards").rglob("*.h5"))) as f:
        assert f["viz"].attrs["compile"] == "compiled"


def test_the_per_pixel_noise_is_drawn_inside_the_compiled_step(tmp_path, graphs):
    _visualize(tmp_path, "text", TINY_MODEL, 3, "0-1", 2, preset="paper-text")
    assert graphs.frame_count == 3                     # paper-text has no clean steps: one graph per layer
    assert any("erfinv" in t for t in graphs.targets)  # the noise's inverse CDF is in the graph
    recipe = resolve_recipe("paper-text", steps=3)
    d = draw(seed_tensor([1, 2], CPU), 2, recipe, (32, 32))
    # the last step (std 0) has the same inputs as every other: no second graph, no [U, C, 3, H, W] made
    assert isinstance(d.noise, PixelNoise) and float(d.noise.std) == 0.0 and d.noise.key.shape == (2,)


def test_a_non_vit_family_runs_eagerly_and_says_so(tmp_path, graphs):
    out = _visualize(tmp_path, "beit", BEIT, 3, "0-2", 2)
    assert graphs.frame_count == 0 and not torch._dynamo.utils.counters["graph_break"]
    assert {line["compile"] for line in read_logs(out) if line.get("stage") == "visualize"} == \
        {"eager (the hook path does not compile)"}


def test_a_compile_failure_falls_back_for_that_layer_and_is_recorded(tmp_path, monkeypatch, tiny_vit):
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, **kw: real(fn, **{**kw, "backend": broken}))
    out = _visualize(tmp_path, "broken", TINY_MODEL, 3, "0-1", 2)
    torch._dynamo.reset()
    modes = [line["compile"] for line in read_logs(out) if line.get("stage") == "visualize"]
    assert len(modes) == 3 and all(m.startswith("eager (compiling failed: BackendCompilerFailed") for m in modes)
    with h5py.File(next((out / "shards").rglob("*.h5"))) as f:
        assert f["viz"].attrs["compile"].startswith("eager (compiling failed")
    # the fallback computes what the eager step computes
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[0]
    recipe = resolve_recipe("quick", steps=3)
    eager = optimize_units(tiny_vit, layer, [0, 1], [5, 6], recipe, CPU)
    step = Step(unit_forward(tiny_vit, layer, torch.float32, CPU), compile=True, device=CPU)
    fell_back = optimize_units(tiny_vit, layer, [0, 1], [5, 6], recipe, CPU, step=step)
    torch._dynamo.reset()
    assert step.mode.startswith("eager (compiling failed")
    np.testing.assert_array_equal(eager.image, fell_back.image)


def test_an_out_of_memory_error_is_not_taken_for_a_compile_failure(tiny_vit, monkeypatch):
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[0]
    step = Step(unit_forward(tiny_vit, layer, torch.float32, CPU), compile=True, device=CPU)

    def out_of_memory(*args):
        error = torch._dynamo.exc.TorchDynamoException("backend failed")   # e.g. autotuning ran out of memory
        error.__cause__ = torch.OutOfMemoryError("CUDA out of memory")
        raise error
    step.fn = out_of_memory
    with pytest.raises(torch.OutOfMemoryError):     # what the scheduler halves the batch on
        optimize_units(tiny_vit, layer, [0], [1], resolve_recipe("quick", steps=1), CPU, step=step)
    assert step.mode == "compiled"


def test_padding_a_batch_changes_no_units_result(tiny_vit):
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[1]
    recipe = resolve_recipe("paper-text", steps=3)
    alone = optimize_units(tiny_vit, layer, [3], [7], recipe, CPU)
    padded = optimize_units(tiny_vit, layer, [3], [7], recipe, CPU, pad_to=4)
    assert padded.image.shape[0] == 1 and padded.loss.shape[0] == 1
    # equal to float32 rounding: the CPU's matrix kernels block a batch of 4 differently from a batch of 1,
    # and Adam's step (a ratio of running moments) carries last-bit differences for a few steps (seen: 4e-6)
    np.testing.assert_allclose(alone.pixels, padded.pixels, atol=2e-5)


# -- the batch trial ---------------------------------------------------------------------------------

def test_the_batch_trial_allocates_the_noise_of_a_real_first_step(monkeypatch, tiny_vit):
    """On CUDA the trial's one step must draw what step 0 draws; shortened(1) ended the noise at once."""
    import builder.schedule as schedule
    seen = []

    def trial(lm, layer, units, seeds, recipe, device, precision, forward):
        seen.append(draw(seed_tensor(seeds, CPU), 0, recipe, lm.input_size))
    monkeypatch.setattr(schedule, "optimize_units", trial)
    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 2 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (10 * 2**30, 16 * 2**30))
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[0]
    recipe = resolve_recipe("paper-text")
    assert schedule.auto_batch_units(tiny_vit, layer, recipe, CUDA, "fp32") == 8   # 0.8 * 10 GiB / 1 GiB
    (d,) = seen
    assert d.noise is not None and float(d.noise.std) == pytest.approx(recipe.noise_std(0)) == 0.5
    assert d.copies == recipe.batch_copies


# -- precision means what it says ----------------------------------------------------------------------

@pytest.fixture
def tf32_switches():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def tf32() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_fp32_is_fp32_and_tf32_only_when_asked(tf32_switches):
    torch.backends.cudnn.allow_tf32 = True      # cuDNN's own default
    assert resolve_precision("fp32", CUDA) == "fp32" and tf32() == (False, False)
    assert resolve_precision("auto", CUDA) == "bf16" and tf32() == (False, False)
    assert resolve_precision("tf32", CUDA) == "tf32" and tf32() == (True, True)
    with exact_fp32():
        assert tf32() == (False, False)
    assert tf32() == (True, True)
    # the probe and analyses resolve auto to fp32, like the stored activation of a picture
    assert resolve_precision("auto", CUDA, engine=False) == "fp32"
    with pytest.raises(AtlasError, match="CUDA tensor-core mode"):
        resolve_precision("tf32", CPU)


def test_the_stored_activation_is_measured_without_tf32(tf32_switches, tiny_vit, monkeypatch):
    import builder.visualize as visualize
    during = []
    real = visualize.run_to
    monkeypatch.setattr(visualize, "run_to", lambda *a, **k: (during.append(tf32()), real(*a, **k))[1])
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    layer = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)[0]
    optimize_units(tiny_vit, layer, [0], [1], resolve_recipe("quick", steps=1), CPU)
    assert during == [(False, False)] and tf32() == (True, True)


def test_bf16_casts_only_products_and_the_residual_stream_stays_fp32(tiny_vit):
    model = tiny_vit.cast(torch.bfloat16, CPU)
    assert model.blocks[0].mlp.fc1.weight.dtype == torch.bfloat16 and model.patch_embed.proj.weight.dtype == torch.bfloat16
    assert model.pos_embed.dtype == model.cls_token.dtype == model.blocks[0].norm1.weight.dtype == torch.float32
    assert tiny_vit.model.blocks[0].mlp.fc1.weight.dtype == torch.float32     # the fp32 model is untouched
    out = {}
    model.blocks[0].register_forward_hook(lambda m, i, o: out.setdefault("x", o))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.rand(1, 3, 32, 32))
    assert out["x"].dtype == torch.float32


# -- calibration and the GPU scripts ---------------------------------------------------------------

def test_calibration_times_the_batch_and_the_compile_mode_a_run_uses(tmp_path, monkeypatch):
    from tests.helpers import write_spec
    import builder.schedule as schedule
    from builder.plan import plan_tasks
    from builder.spec import load_spec
    calls = []
    monkeypatch.setattr(schedule, "optimize_units",
                        lambda lm, layer, units, seeds, recipe, device, precision, forward, step:
                        calls.append((len(units), recipe.steps, step.mode)))
    monkeypatch.setattr(schedule, "auto_batch_units", lambda *a, **k: 13)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    spec = load_spec(write_spec(tmp_path))
    spec.compile = "on"
    rate, where = schedule.calibrate(spec, plan_tasks(spec))
    assert calls == [(13, schedule.CALIBRATION_STEPS, "compiled")] * 2      # one untimed, one timed
    assert "13 units per batch, compiled" in where and rate > 0


@pytest.mark.slow
def test_gpu_scripts_walk_every_command_on_the_cpu(tmp_path):
    """`--dry-run` runs what gpu.sh and gpu_check.sh run on a GPU, with tiny sizes on the CPU, so a
    broken flag or path fails here, not on the first GPU."""
    for script in ("gpu.sh", "gpu_check.sh"):
        run = subprocess.run(["bash", str(ROOT / "benchmarks" / script), "--dry-run"], capture_output=True, text=True,
                             env={"PATH": f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin", "OUT": str(tmp_path / script),
                                  "PYTHON": sys.executable, "HOME": str(tmp_path)}, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        table = [line for line in run.stdout.splitlines() if line.startswith("|")]
        assert len(table) >= 3 and all(line.count("|") == table[0].count("|") for line in table), table
