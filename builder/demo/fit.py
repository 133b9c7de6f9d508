"""The demo models' one training loop: AdamW under a one-cycle schedule over shuffled passes of the data."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm


def fit(model: torch.nn.Module, loss_of: Callable[[torch.Tensor], torch.Tensor], n: int, epochs: int,
        batch_size: int, lr: float, weight_decay: float, warmup: float, g: torch.Generator, desc: str,
        progress: bool = True) -> list[float]:
    """Train ``model`` for ``epochs`` passes over ``n`` examples in batches drawn by ``g`` (a permutation a
    pass); ``loss_of(indices)`` gives a batch's loss. AdamW (``lr``, ``weight_decay``) with a one-cycle
    schedule warming up over the ``warmup`` share of the steps. Returns the per-step losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(n / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=warmup)
    losses: list[float] = []
    with tqdm(total=steps, desc=desc, unit="step", disable=not progress, dynamic_ncols=True) as bar:
        for _ in range(epochs):
            model.train()
            order = torch.randperm(n, generator=g)
            for i in range(0, n, batch_size):
                loss = loss_of(order[i:i + batch_size])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    return losses
