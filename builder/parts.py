"""Splitting a build over processes, GPUs and machines with the launchers people already use.

A process learns its part from ``--shard-index I --num-shards N``; else from Slurm (an array job's
``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``, or ``SLURM_PROCID``/``SLURM_NTASKS`` for
``srun``); else from torchrun (``RANK``/``WORLD_SIZE``, with ``LOCAL_RANK`` choosing the GPU). No
process group is created: every process computes the same deterministic plan and takes its part.
"""
from __future__ import annotations

import heapq
import os
from dataclasses import dataclass

from atlas.format import AtlasError


@dataclass(frozen=True)
class Part:
    """This process's share of the work: part ``index`` of ``count``, and the GPU it should use."""
    index: int = 0
    count: int = 1
    local_rank: int | None = None
    source: str = "single process"


def detect_part(shard_index: int | None = None, num_shards: int | None = None, env=None) -> Part:
    """The part from the flags, else Slurm, else torchrun, else the whole build."""
    env = os.environ if env is None else env
    if shard_index is not None or num_shards is not None:
        if shard_index is None or num_shards is None:
            raise AtlasError("pass --shard-index and --num-shards together")
        part = Part(shard_index, num_shards, None, "--shard-index/--num-shards")
    elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        part = Part(int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"]), None, "Slurm array")
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        local = env.get("SLURM_LOCALID")
        part = Part(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(local) if local else None, "Slurm srun")
    elif "RANK" in env and "WORLD_SIZE" in env:
        local = env.get("LOCAL_RANK")
        part = Part(int(env["RANK"]), int(env["WORLD_SIZE"]), int(local) if local else None, "torchrun")
    else:
        return Part()
    if not 0 <= part.index < part.count:
        raise AtlasError(f"part {part.index} of {part.count} ({part.source}) is out of range")
    return part


def partition(costs: list[float], count: int) -> list[int]:
    """Assign items to ``count`` parts balancing total cost (largest first, to the lightest part).
    Deterministic: ties go to the lower part index, items of equal cost keep their order."""
    owner = [0] * len(costs)
    heap = [(0.0, p) for p in range(count)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, p = heapq.heappop(heap)
        owner[i] = p
        heapq.heappush(heap, (load + costs[i], p))
    return owner
