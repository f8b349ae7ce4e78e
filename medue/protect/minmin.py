"""The min-min (bi-level) optimisation shared by EM, SEM, SALM and UC.

Huang et al. (ICLR 2021) alternate two minimisations until the surrogate fits the perturbed data:
``train_steps`` optimiser steps of the surrogate on ``x + delta``, then ``inner_steps`` sign-gradient
steps that *decrease* the loss w.r.t. ``delta`` (error-minimising noise), stopping once training accuracy on
the perturbed data reaches ``stop_accuracy``. The hooks here add SEM's random inner noise (``rho``) and
SALM's sparse mask (``mask_fn``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from medue.protect.base import UnitSpace, batches, project

#: ``mask_fn(grad, x_model, proposed) -> 0/1 mask``: where the update may act (SALM); ``None`` means everywhere.
#: ``proposed`` is the delta after the unmasked sign step, so a mask may favour pixels already perturbed.
MaskFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MinMinSettings:
    """Hyper-parameters of the bi-level loop (units are stored units)."""

    epsilon: int
    step: int
    inner_steps: int = 20
    train_steps: int = 10
    max_rounds: int = 10
    stop_accuracy: float = 0.99
    batch_size: int = 64
    lr: float = 0.1
    rho: int = 0


def uniform_noise(shape: torch.Size, bound: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform noise in ``[-bound, bound]`` drawn on the CPU (same draws on every device)."""
    return (torch.rand(shape, generator=generator) * 2 - 1).mul_(bound).to(device)


def error_minimizing_delta(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor,
                           space: UnitSpace, *, settings: MinMinSettings, steps: int, generator: torch.Generator,
                           mask_fn: MaskFn | None = None, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Sample-wise error-minimising update of ``delta`` for one batch (surrogate frozen, in eval mode).

    With ``mask_fn`` the delta is projected onto the mask chosen at each step, so its support never exceeds
    the mask. ``allowed`` (0/1) confines the delta to a region (body/foreground).
    """
    model.eval()
    for _ in range(steps):
        d = delta.detach().clone().requires_grad_(True)
        inp = x + d
        if settings.rho > 0:
            inp = inp + torch.round(uniform_noise(x.shape, settings.rho, generator, x.device))
        loss = F.cross_entropy(model(space.to_model(inp)), y)
        (grad,) = torch.autograd.grad(loss, d)
        new = delta - settings.step * torch.sign(grad)
        if mask_fn is not None:
            new = new * mask_fn(grad, space.to_model(x), new)
        if allowed is not None:
            new = new * allowed
        delta = project(new, x, space, settings.epsilon)
    return delta.detach()


def train_surrogate(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                    delta: torch.Tensor, space: UnitSpace, *, settings: MinMinSettings, steps: int,
                    generator: torch.Generator) -> None:
    """``steps`` SGD steps on random batches of ``x + delta`` (SEM: plus random noise)."""
    model.train()
    n = x.shape[0]
    for _ in range(steps):
        idx = torch.randint(n, (min(settings.batch_size, n),), generator=generator).to(x.device)
        inp = x[idx] + delta[idx]
        if settings.rho > 0:
            inp = inp + torch.round(uniform_noise(inp.shape, settings.rho, generator, x.device))
        loss = F.cross_entropy(model(space.select(idx).to_model(inp)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, space: UnitSpace,
             batch_size: int) -> float:
    model.eval()
    correct = 0
    for sl in batches(x.shape[0], batch_size):
        pred = model(space.select(sl).to_model(x[sl] + delta[sl])).argmax(1)
        correct += int((pred == y[sl]).sum())
    return correct / max(x.shape[0], 1)


def bilevel_samplewise(model: nn.Module, x: torch.Tensor, y: torch.Tensor, space: UnitSpace, *,
                       settings: MinMinSettings, generator: torch.Generator, mask_fn: MaskFn | None = None,
                       allowed: torch.Tensor | None = None, progress: Callable[[str], None] | None = None
                       ) -> tuple[torch.Tensor, list[float]]:
    """Bi-level loop with one delta per sample. Returns ``(delta, accuracy per round)``."""
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9, weight_decay=5e-4)
    delta = torch.zeros_like(x)
    history: list[float] = []
    for r in range(settings.max_rounds):
        train_surrogate(model, opt, x, y, delta, space, settings=settings, steps=settings.train_steps,
                        generator=generator)
        for sl in batches(x.shape[0], settings.batch_size):
            delta[sl] = error_minimizing_delta(model, x[sl], y[sl], delta[sl], space.select(sl), settings=settings,
                                               steps=settings.inner_steps, generator=generator, mask_fn=mask_fn,
                                               allowed=None if allowed is None else allowed[sl])
        acc = accuracy(model, x, y, delta, space, settings.batch_size)
        history.append(acc)
        if progress:
            progress(f"round {r + 1}/{settings.max_rounds}: surrogate accuracy on perturbed data {acc:.3f}")
        if acc >= settings.stop_accuracy:
            break
    return delta, history


def tile_to(noise: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tile class/cluster noise ``(K, C, h, w)`` periodically to ``(K, C, height, width)``."""
    h, w = noise.shape[-2:]
    reps = (-(-height // h), -(-width // w))
    return noise.repeat(1, 1, *reps)[..., :height, :width]


def bilevel_classwise(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, space: UnitSpace, *,
                      settings: MinMinSettings, generator: torch.Generator,
                      progress: Callable[[str], None] | None = None) -> tuple[torch.Tensor, list[float]]:
    """Bi-level loop with one universal delta per class ``(K, C, H, W)`` (class-wise EM, UC clusters)."""
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9, weight_decay=5e-4)
    noise = torch.zeros((num_classes, *x.shape[1:]), device=x.device)
    history: list[float] = []
    for r in range(settings.max_rounds):
        per_sample = project(noise[y], x, space, settings.epsilon)
        train_surrogate(model, opt, x, y, per_sample, space, settings=settings, steps=settings.train_steps,
                        generator=generator)
        model.eval()
        for sl in batches(x.shape[0], settings.batch_size):
            for _ in range(settings.inner_steps):
                d = noise.detach().clone().requires_grad_(True)
                loss = F.cross_entropy(model(space.select(sl).to_model(x[sl] + d[y[sl]])), y[sl])
                (grad,) = torch.autograd.grad(loss, d)
                noise = torch.clamp(torch.round(noise - settings.step * torch.sign(grad)),
                                    -settings.epsilon, settings.epsilon)
        per_sample = project(noise[y], x, space, settings.epsilon)
        acc = accuracy(model, x, y, per_sample, space, settings.batch_size)
        history.append(acc)
        if progress:
            progress(f"round {r + 1}/{settings.max_rounds}: surrogate accuracy on perturbed data {acc:.3f}")
        if acc >= settings.stop_accuracy:
            break
    return noise.detach(), history
