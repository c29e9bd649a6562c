"""A small deterministic training loop for test checkpoints of any model family.

The caller supplies the model, a batch maker (step -> keyword arguments of the model's
forward, with ``labels``) and optional phase callbacks; the loop knows nothing about
the architecture. Gradient masks keep planted weights fixed (an entry with mask 0 never
moves: AdamW without weight decay, zero gradient from the first step).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Mask = tuple[torch.nn.Parameter, torch.Tensor]


@dataclass
class Schedule:
    steps: int
    learning_rate: float
    warmup: int = 20
    floor: float = 0.05  # the linear decay stops at this share of the peak rate

    def factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, self.warmup))
        return warm * max(self.floor, 1 - step / max(1, self.steps))


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def padded(
    rows: list[list], width: int, fill: float, dtype: torch.dtype = torch.long
) -> torch.Tensor:
    """``rows`` right-padded with ``fill`` to ``width``, as one ``(len(rows), width)`` tensor."""
    t = torch.full((len(rows), width), fill, dtype=dtype)
    for i, r in enumerate(rows):
        t[i, : len(r)] = torch.tensor(r, dtype=dtype)
    return t


def freeze(module: torch.nn.Module) -> None:
    """Stop training ``module`` (its parameters keep their values from now on)."""
    for p in module.parameters():
        p.requires_grad_(False)
        p.grad = None


def train(
    model: torch.nn.Module,
    make_batch: Callable[[int], dict[str, torch.Tensor]],
    schedule: Schedule,
    masks: list[Mask] | None = None,
    phases: dict[int, Callable[[], list[Mask]]] | None = None,
    log: bool = False,
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor] | None = None,
) -> TrainLog:
    """Train ``model`` in place. ``phases[step]()`` runs before that step and returns
    masks to add (it may freeze modules or plant weights). ``loss_fn(model, batch)``
    replaces the model's own loss (e.g. to add an auxiliary term)."""
    masks = list(masks or [])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=schedule.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule.factor)
    out = TrainLog()
    start = time.monotonic()
    model.train()
    for step in range(schedule.steps):
        if phases and step in phases:
            model.eval()
            masks += phases[step]()
            model.train()
        batch = make_batch(step)
        loss = loss_fn(model, batch) if loss_fn else model(**batch).loss
        opt.zero_grad(set_to_none=False)
        loss.backward()
        for p, m in masks:
            if p.grad is not None:
                p.grad.mul_(m)
        live = [p for p in params if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(live, 1.0)
        opt.step()
        sched.step()
        out.losses.append(loss.item())
        if log and (step % 50 == 0 or step == schedule.steps - 1):
            print(f"step {step:4d}  loss {loss.item():.3f}", file=sys.stderr, flush=True)
    model.eval()
    out.seconds = time.monotonic() - start
    return out
