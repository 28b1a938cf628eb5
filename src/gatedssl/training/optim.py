"""Optimizers and the learning-rate schedule of the reference recipe.

torch has no LARS; this one follows the form used by the reference code base (solo-learn's):
trust ratio eta * |w| / (|g| + wd * |w|), clipped at the group's lr, weight decay folded into
the update, applied to weight matrices/kernels only. It works on whole parameter lists with
torch's foreach kernels: no Python loop over parameters doing device work one by one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

OPTIMIZERS = ("lars", "sgd", "adamw")


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios; groups with lars=False are plain SGD."""

    def __init__(
        self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02, clip: bool = True, eps: float = 1e-8
    ):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip=clip, eps=eps, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            lr, wd = group["lr"], group["weight_decay"]
            if group["lars"]:
                p_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                trust = group["eta"] * p_norm / (g_norm + wd * p_norm + group["eps"])
                trust = torch.where((p_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
                if group["clip"]:
                    trust = torch.clamp(trust / lr, max=1.0)
                grads = torch._foreach_add(grads, params, alpha=wd) if wd else list(grads)
                torch._foreach_mul_(grads, list(trust.unbind()))
            elif wd:
                grads = torch._foreach_add(grads, params, alpha=wd)
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, bufs, alpha=-lr)
        return loss


def param_groups(model: nn.Module, weight_decay: float, gate_lr_scale: float = 1.0, gate_lars: bool = False) -> list[dict]:
    """Weights (decay, LARS), gates (no decay), other biases and norms (neither).

    Gates get no weight decay (as in the paper): decay pulls their logits toward 0, the
    threshold, and keeps the masks noisy. They are few and their gradient is mostly the budget
    loss's, so they may take a larger step (gate_lr_scale) where a short run must converge.
    gate_lars: the reference's form, the gates' conv weights adapted by LARS in a group of their
    own (their BN and bias excluded, as everywhere); otherwise all gate parameters get plain SGD.
    """
    weights, gates, gate_flat, flat = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if ".gate." in f".{name}":
            (gate_flat if gate_lars and p.ndim <= 1 else gates).append(p)
        elif p.ndim <= 1:
            flat.append(p)
        else:
            weights.append(p)
    groups = [
        dict(params=weights, weight_decay=weight_decay, lars=True, lr_scale=1.0, name="weights"),
        dict(params=gates, weight_decay=0.0, lars=gate_lars, lr_scale=gate_lr_scale, name="gates"),
        dict(params=gate_flat, weight_decay=0.0, lars=False, lr_scale=gate_lr_scale, name="gate_biases_and_norms"),
        dict(params=flat, weight_decay=0.0, lars=False, lr_scale=1.0, name="biases_and_norms"),
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    eta: float = 0.02,
    gate_lr_scale: float = 1.0,
    gate_lars: bool = False,
) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, gate_lr_scale, gate_lars)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, eta=eta)
    if name == "sgd":
        for g in groups:
            g["lars"] = False
        return LARS(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        fused = all(p.is_cuda for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=lr, **({"fused": True} if fused else {"foreach": True}))
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from lr/warmup_steps to lr, then cosine decay to 0; stepped every batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
