"""Splitting a build over processes, GPUs and machines with the launchers people already use.

A process learns its share from ``--share-index I --num-shares N``; else from torchrun
(``RANK``/``WORLD_SIZE``, with ``LOCAL_RANK`` choosing the GPU), combined with a Slurm array job's
task when both are present; else from a Slurm array job (``SLURM_ARRAY_TASK_ID``/``_COUNT``); else
from ``srun`` (``SLURM_PROCID``/``SLURM_NTASKS`` inside a job step). No process group is created:
every process computes the same deterministic plan and takes its share.
"""
from __future__ import annotations

import heapq
import os
from dataclasses import dataclass

import torch

from atlas.format import AtlasError


@dataclass(frozen=True)
class Share:
    """This process's share of a build: share ``index`` of ``count``, and the GPU it should use."""
    index: int = 0
    count: int = 1
    local_rank: int | None = None
    source: str = "single process"


def detect_share(share_index: int | None = None, num_shares: int | None = None, env=None) -> Share:
    """The share from the flags, else from the launcher that started this process.

    torchrun comes before Slurm: a torchrun inside an sbatch script still sees the batch step's
    ``SLURM_PROCID=0``, which is not its rank (Lightning's issue 11406). Slurm's ``SLURM_PROCID`` counts
    only inside an ``srun`` step (``SLURM_STEP_ID`` set). An array task running torchrun has share
    ``task · world + rank`` of ``tasks · world``.
    """
    env = os.environ if env is None else env
    if share_index is not None or num_shares is not None:
        if share_index is None or num_shares is None:
            raise AtlasError("pass --share-index and --num-shares together")
        share = Share(share_index, num_shares, None, "--share-index/--num-shares")
    else:
        torchrun = _torchrun(env)
        array = _slurm_array(env)
        if torchrun and array:
            (rank, world, local), (task, tasks) = torchrun, array
            share = Share(task * world + rank, tasks * world, local, "Slurm array x torchrun")
        elif torchrun:
            share = Share(torchrun[0], torchrun[1], torchrun[2], "torchrun")
        elif array:
            share = Share(array[0], array[1], _int(env, "SLURM_LOCALID"), "Slurm array")
        elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
            share = Share(_int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"), _int(env, "SLURM_LOCALID"), "Slurm srun")
        else:
            return Share()
    if not 0 <= share.index < share.count:
        raise AtlasError(f"share {share.index} of {share.count} ({share.source}) is out of range")
    return share


def _int(env, key: str) -> int | None:
    value = env.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise AtlasError(f"the launcher set {key}={value!r}, which is not a whole number") from None


def _torchrun(env) -> tuple[int, int, int | None] | None:
    """(rank, world size, local rank) when torchrun (or torch.distributed's launcher) started us."""
    if "RANK" in env and "WORLD_SIZE" in env and ("LOCAL_RANK" in env or "TORCHELASTIC_RUN_ID" in env):
        return _int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK")
    return None


def _slurm_array(env) -> tuple[int, int] | None:
    """(task, tasks) of a Slurm array job."""
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        return _int(env, "SLURM_ARRAY_TASK_ID") - (_int(env, "SLURM_ARRAY_TASK_MIN") or 0), _int(env, "SLURM_ARRAY_TASK_COUNT")
    return None


def share_device(device: torch.device, share: Share) -> torch.device:
    """The device this share computes on, made the current CUDA device: the launcher's local rank picks
    the GPU when ``device`` names none (``cuda``), so ``synchronize()`` and every library call that
    uses "the current device" agree with the tensors' device."""
    if device.type != "cuda":
        return device
    if device.index is None:
        count = torch.cuda.device_count()
        device = torch.device("cuda", (share.local_rank or 0) % count if count else 0)
    torch.cuda.set_device(device)
    return device


def partition(costs: list[float], count: int) -> list[int]:
    """Assign items to ``count`` shares balancing total cost (largest first, to the lightest share).
    Deterministic: ties go to the lower share index, items of equal cost keep their order."""
    owner = [0] * len(costs)
    heap = [(0.0, p) for p in range(min(count, len(costs)))]   # shares past the items' count get none
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, p = heapq.heappop(heap)
        owner[i] = p
        heapq.heappush(heap, (load + costs[i], p))
    return owner
