"""Wall clock of the offline demo (`python build.py`) on this CPU, with the CPU's kind recorded, and
optionally with PyTorch's, oneDNN's and MKL's instruction sets capped to a lesser kind.

    python benchmarks/demo_time.py                      # this CPU as it is
    python benchmarks/demo_time.py --isa native,avx2    # on an AVX-512 machine: both kinds of issue 23
    python benchmarks/demo_time.py --isa native,default # how much the vector units matter at all

Each run builds the demo into a fresh temporary folder in a child process (so the caps apply from the
interpreter's start), then splits the wall clock with the atlas's own logs: the two pictures of each
site (visualize), the probe, and the rest (dataset, other sites, analyses, manifest, website). Prints
one JSON record per run and a Markdown row for docs/benchmarks.md.

The caps (`--isa avx2`: ATEN_CPU_CAPABILITY=avx2, DNNL_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2)
approximate a machine without AVX-512 on one with it: the kernels are the other kind's, the clock,
caches and memory are still this machine's.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from atlas.format import SHARD_PATH
from atlas.log import read_logs

ROOT = Path(__file__).resolve().parent.parent

# The switches each library reads at start-up; "native" sets none.
ISA_CAPS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "DNNL_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}


def cpu_kind() -> dict:
    """What `lscpu` says of this CPU: model name, family/model/stepping, cores and its vector flags."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if shutil.which("lscpu") else ""
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("Flags", "").split()
    return {"model_name": fields.get("Model name", "?"), "family": fields.get("CPU family", "?"),
            "model": fields.get("Model", "?"), "stepping": fields.get("Stepping", "?"),
            "cpus": os.cpu_count(), "vector_flags": sorted(f for f in flags if re.match(r"avx|fma|amx", f))}


def capability(env: dict) -> str:
    """ATen's CPU capability as a child process with ``env`` sees it (checks that the cap took)."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip()


def stage_seconds(atlas: Path) -> dict:
    """Seconds per stage from the atlas's run logs: visualize per site and picture, the probe, the maps."""
    seconds = defaultdict(float)
    for record in read_logs(atlas):
        if record.get("stage") == "visualize":
            site = SHARD_PATH.match(record["shard"])["site"]
            seconds[f"visualize {site} {record.get('part', 'viz')}"] += record["seconds"]
        elif record.get("stage") in ("probe", "map"):
            seconds[record["stage"]] += record["seconds"]
    return {k: round(v, 1) for k, v in sorted(seconds.items())}


# --without-maps: the same build with the maps' stage taken out (its functions made no-ops in the child), so
# that the two wall clocks say what the maps add (issue 33); a measurement only, no product switch
WITHOUT_MAPS = ("import sys, builder.maps as m; m.run_maps = lambda *a, **k: {}; "
                "m.compile_in_background = lambda: None; import build; sys.exit(build.main(sys.argv[1:]))")


def run_demo(isa: str, maps: bool = True) -> dict:
    """Build the demo once under ``isa``'s caps; the wall clock includes the interpreter's start."""
    env = {**os.environ, **ISA_CAPS[isa]}
    with tempfile.TemporaryDirectory(prefix="demo-time-") as tmp:
        atlas = Path(tmp) / "atlas-demo"
        start = time.perf_counter()
        program = [str(ROOT / "build.py")] if maps else ["-c", WITHOUT_MAPS]
        done = subprocess.run([sys.executable, *program, "demo", "--out", str(atlas)], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        if done.returncode:
            sys.exit(f"the demo failed under --isa {isa}:\n{done.stderr[-2000:]}")
        stages = stage_seconds(atlas)
    pictures = sum(v for k, v in stages.items() if k.startswith("visualize"))
    return {"isa": isa, "maps": maps, "caps": ISA_CAPS[isa], "aten_capability": capability(env), "wall_s": round(wall, 1),
            "stages_s": stages, "rest_s": round(wall - pictures - stages.get("probe", 0.0) - stages.get("map", 0.0), 1)}


def markdown_row(record: dict, cpu: dict) -> str:
    """One row of docs/benchmarks.md's demo table."""
    s = record["stages_s"]
    picture = lambda part: " + ".join(f"{v:.0f} s {k.split()[1]}" for k, v in s.items()
                                      if k.startswith("visualize") and k.endswith(part) and v >= 1)
    machine = (f"{cpu['cpus']}-core {cpu['model_name']} (family {cpu['family']} model {cpu['model']}; "
               f"{' '.join(cpu['vector_flags'])}), ATen {record['aten_capability']}")
    return (f"| {time.strftime('%Y-%m-%d')} | {machine} | **{record['wall_s']:.0f} s** | {picture('viz')} | "
            f"{picture('fourier')} | probe {s.get('probe', 0):.0f} s; maps {s.get('map', 0):.0f} s; "
            f"rest {record['rest_s']:.0f} s |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--isa", default="native", help=f"comma-separated, of {', '.join(ISA_CAPS)}")
    p.add_argument("--repeat", type=int, default=1, help="runs per --isa value")
    p.add_argument("--without-maps", action="store_true",
                   help="also build each time without the maps' stage (alternating), to measure what it adds")
    args = p.parse_args()
    kinds = args.isa.split(",")
    unknown = [k for k in kinds if k not in ISA_CAPS]
    if unknown:
        sys.exit(f"--isa {','.join(unknown)}: not one of {', '.join(ISA_CAPS)}")
    cpu = cpu_kind()
    print(json.dumps({"cpu": cpu}))
    rows = []
    for isa in kinds:
        for _ in range(args.repeat):
            for maps in (True, False) if args.without_maps else (True,):
                record = run_demo(isa, maps)
                print(json.dumps(record), flush=True)
                rows.append(markdown_row(record, cpu))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
