"""The reference optimisation recipe (docs/behaviour.md §9): BertAdam, its schedule, parameter
groups.

The training loop of the recipe, per batch::

    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)   # global clip (the loop's job)
    optimizer.step()                                          # BertAdam: per-parameter clip too
    optimizer.zero_grad()
    clamp_logit_scale(model)

Schedule length: ``t_total = steps_per_epoch * epochs``. The reference passes
``steps_per_epoch * 5`` whatever ``--epochs`` says, so with other epoch counts its cosine does
not end at zero (fewer epochs) or climbs back up after the fifth (more); this project uses the
actual length (docs/behaviour.md §12).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from tvr.training.distributed import unwrap_model

CLIP_PREFIX = "clip."
NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")  # name substrings, as the reference
CLIP_GRAD_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6)


def warmup_cosine(x: float, warmup: float) -> float:
    """Learning-rate factor at training progress ``x`` = step / t_total.

    Linear warm-up ``x / warmup`` while ``x < warmup``, then ``0.5 (1 + cos(pi x))`` (which
    starts at ``0.5 (1 + cos(pi warmup))``, not at 1, exactly as the reference).
    """
    if x < warmup:
        return x / warmup
    return 0.5 * (1.0 + math.cos(math.pi * x))


SCHEDULES: dict[str, Callable[[float, float], float]] = {"warmup_cosine": warmup_cosine}


class BertAdam(Optimizer):
    """Adam without bias correction, with decoupled weight decay under the schedule.

    For every parameter p with a gradient, at its own step count s (0 on the first update):

    1. g = p.grad * min(1, max_grad_norm / (||p.grad|| + 1e-6)) (in place on ``p.grad``, as
       the reference's per-parameter ``clip_grad_norm_(p, max_grad_norm)``);
    2. m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    3. update = m / (sqrt(v) + e) + weight_decay * p   (decay only when weight_decay > 0);
    4. p -= lr * schedule(s / t_total, warmup) * update;  s += 1.

    So the first update has learning rate 0 (the moments still accumulate). Defaults are the
    values main_retrieval.py of the reference passes (b2 0.98, weight decay 0.2, warm-up 0.1,
    warmup_cosine); the class defaults of the reference's BertAdam (b2 0.999, weight decay
    0.01, warmup_linear) are never used by the recipe. Groups may override ``lr``,
    ``weight_decay``, ``t_total``, ``warmup`` and the other settings; everything, step counts
    included, is in :meth:`state_dict`, so a restored optimiser continues identically.

    Parameters are processed per group with ``torch._foreach_*`` kernels; step counts are kept
    per parameter (a parameter without gradient at some step keeps its count, as in the
    reference), and parameters sharing a count share one scheduled learning rate.
    """

    def __init__(self, params: Iterable[Any], lr: float, t_total: int, warmup: float = 0.1,
                 schedule: str = "warmup_cosine", b1: float = 0.9, b2: float = 0.98,
                 e: float = 1e-6, weight_decay: float = 0.2, max_grad_norm: float = 1.0):
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}: must be >= 0")
        if t_total < 1:
            raise ValueError(f"invalid t_total {t_total}: must be the number of optimiser "
                             f"steps of the run (steps per epoch x epochs), >= 1")
        if schedule not in SCHEDULES:
            raise ValueError(f"invalid schedule {schedule!r}: choose one of {sorted(SCHEDULES)}")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"invalid warmup {warmup}: must be in [0, 1)")
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"invalid betas ({b1}, {b2}): each must be in [0, 1)")
        if e < 0.0:
            raise ValueError(f"invalid epsilon {e}: must be >= 0")
        defaults = dict(lr=lr, t_total=t_total, warmup=warmup, schedule=schedule, b1=b1, b2=b2,
                        e=e, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    @staticmethod
    def scheduled_lr(group: dict[str, Any], step: int) -> float:
        """The learning rate a parameter of ``group`` gets at its update number ``step``."""
        factor = SCHEDULES[group["schedule"]](step / group["t_total"], group["warmup"])
        return group["lr"] * factor

    def get_lr(self) -> list[float]:
        """Per group, the learning rate of the next update (for logging)."""
        lrs = []
        for group in self.param_groups:
            steps = [self.state[p]["step"] for p in group["params"] if self.state[p]]
            lrs.append(self.scheduled_lr(group, max(steps, default=0)))
        return lrs

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("BertAdam does not support sparse gradients")
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["next_m"] = torch.zeros_like(p)
                    state["next_v"] = torch.zeros_like(p)
            grads = [p.grad for p in params]
            if group["max_grad_norm"] > 0:
                norms = torch.stack(torch._foreach_norm(grads))
                coefs = (group["max_grad_norm"] / (norms + CLIP_GRAD_EPS)).clamp_(max=1.0)
                torch._foreach_mul_(grads, list(coefs.unbind()))
            ms = [self.state[p]["next_m"] for p in params]
            vs = [self.state[p]["next_v"] for p in params]
            b1, b2 = group["b1"], group["b2"]
            torch._foreach_mul_(ms, b1)
            torch._foreach_add_(ms, grads, alpha=1.0 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, grads, grads, value=1.0 - b2)
            denominators = torch._foreach_sqrt(vs)
            torch._foreach_add_(denominators, group["e"])
            updates = torch._foreach_div(ms, denominators)
            del denominators
            if group["weight_decay"] > 0.0:
                torch._foreach_add_(updates, params, alpha=group["weight_decay"])
            by_step: dict[int, list[int]] = defaultdict(list)
            for i, p in enumerate(params):
                by_step[self.state[p]["step"]].append(i)
            for step, indices in by_step.items():
                lr = self.scheduled_lr(group, step)
                torch._foreach_add_([params[i] for i in indices], [updates[i] for i in indices],
                                    alpha=-lr)
            for p in params:
                self.state[p]["step"] += 1
        return loss


def param_groups(model: nn.Module, lr: float, coef_lr: float,
                 weight_decay: float) -> list[dict[str, Any]]:
    """The reference's four parameter groups, in its order.

    ``decay_clip``, ``decay_other``, ``no_decay_clip``, ``no_decay_other``: names containing
    "clip." (CLIP's weights) get ``lr * coef_lr``, the rest ``lr``; names containing "bias",
    "LayerNorm.bias" or "LayerNorm.weight" get no weight decay. No module here is called
    "LayerNorm", so every LayerNorm weight (CLIP's ``ln_*``, Psi's ``layer_norm*``) decays, as in
    the reference. Frozen parameters (requires_grad False, e.g. CLIP's conv1) are left out.
    Each group carries its ``name`` for logging.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = defaultdict(list)
    for name, param in unwrap_model(model).named_parameters():
        if param.requires_grad:
            decay = not any(token in name for token in NO_DECAY)
            groups[(decay, CLIP_PREFIX in name)].append(param)
    return [
        {"name": f"{'decay' if decay else 'no_decay'}_{'clip' if clip else 'other'}",
         "params": groups[(decay, clip)],
         "lr": lr * coef_lr if clip else lr,
         "weight_decay": weight_decay if decay else 0.0}
        for decay in (True, False) for clip in (True, False)
    ]


def freeze_clip_towers(model: nn.Module) -> int:
    """Stop gradients into CLIP's image and text towers (every ``clip.`` parameter except
    ``logit_scale``, which keeps training at ``lr * coef_lr``); returns how many tensors were
    frozen. Used by feature mode, and by the trainer when ``--coef_lr 0``: a zero-lr parameter
    never moves under BertAdam (the decay is scaled by the lr too), so freezing only skips the
    backward through CLIP and leaves these gradients out of the global ``clip_grad_norm_``."""
    frozen = 0
    for name, param in unwrap_model(model).clip.named_parameters():
        if name != "logit_scale" and param.requires_grad:
            param.requires_grad_(False)
            frozen += 1
    return frozen


def build_optimizer(model: nn.Module, lr: float, coef_lr: float, weight_decay: float,
                    warmup: float, steps_per_epoch: int, epochs: int) -> BertAdam:
    """BertAdam over :func:`param_groups` with ``t_total = steps_per_epoch * epochs``."""
    return BertAdam(param_groups(model, lr, coef_lr, weight_decay), lr=lr,
                    t_total=steps_per_epoch * epochs, warmup=warmup, weight_decay=weight_decay)


def clamp_logit_scale(model: nn.Module, max_scale: float = 100.0) -> None:
    """Clamp CLIP's ``logit_scale`` to <= log(max_scale), in place; call after every step."""
    with torch.no_grad():
        unwrap_model(model).clip.logit_scale.clamp_(max=math.log(max_scale))
