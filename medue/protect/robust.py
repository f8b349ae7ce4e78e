"""Class-wise error-minimising patterns fitted through the attacker's habits, placed on the salient tissue.

The pieces, and where they come from:

* **Error-minimising, class-wise** (Huang et al., ICLR 2021): one pattern per class, fitted by the min-min loop
  (surrogate training on perturbed images alternating with sign-gradient steps that *decrease* its loss), so that
  the pattern is a shortcut for the labels that a network learns before the anatomy. Every class has its own.
* **Sparse local mask of the most significant pixels** (SALM, Sun et al. 2024): the budget goes to a fraction
  ``mask_ratio`` of each image's pixels, chosen by significance. Ours: significance is the local (5x5) mean
  intensity, so the mask lies in the brightest anatomy, not in background, and is the same for every network.
* **Expectation over the attacker's transformations** (ours, after Athalye et al. 2018): every loss of the fit is
  computed after a random habit of :mod:`medue.protect.stand_ins` (MONAI-style augmentation, half resolution, blur,
  median, 3-bit depth, JPEG q10, noise), against an ensemble of surrogates with different stems, so a change those
  transformations erase earns nothing.
* **Low spatial frequency, periodic, oriented** (ours): each class pattern is a ``period`` x ``period`` tile
  repeated over the image (a crop shifts its phase, any image size is covered), started from a sine grating of one
  orientation per class (horizontal and vertical for two classes: a flip keeps both, a rotation of 15 degrees
  barely changes them) and kept at the energy of that grating while it is optimised. Smoothing, area resampling,
  the median and JPEG's coarse quantisation remove fine structure and keep periods of 6 px and more; a signed
  change inside textured tissue is dithered, not rounded away, by bit-depth reduction.
* **Budget per image**: the delta of each slice is scaled so that its PSNR (span: the slice's max - min) stays at
  least ``psnr_db``, then rounded to whole stored units within ``epsilon``.

The functions here are pure tensor code; :class:`medue.protect.salm.SALMProtector` wires them into a protector.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from medue.protect.base import UnitSpace
from medue.protect.masks import topk_mask
from medue.protect.minmin import tile_to
from medue.protect.stand_ins import HABITS, attacker_habit, round_ste
from medue.protect.surrogate import make_surrogate

#: Surrogates of the fit's ensemble (:func:`medue.protect.surrogate.make_surrogate` layouts): a 3x3 stem at full
#: resolution and a stride-2 stem, as the attackers' ResNet-18 and DenseNet-121 differ.
ENSEMBLE = ("small", "strided")


def oriented_gratings(num_classes: int, period: int) -> torch.Tensor:
    """``(num_classes, period, period)`` sine gratings in ``[-1, 1]``, one orientation per class.

    Orientations are spread over 180 degrees starting at 0 (two classes: horizontal and vertical stripes). With
    more than two classes, classes beyond the first two also differ in phase so that no two tiles coincide.
    """
    yy, xx = torch.meshgrid(torch.arange(period, dtype=torch.float32), torch.arange(period, dtype=torch.float32),
                            indexing="ij")
    tiles = []
    for c in range(num_classes):
        theta = math.pi * c / max(num_classes, 2)
        # a whole number of cycles along each axis keeps the tile periodic
        kx, ky = round(math.cos(theta) * 1), round(math.sin(theta) * 1)
        if kx == 0 and ky == 0:
            kx = 1
        phase = 2 * math.pi * c / max(num_classes, 1) * (num_classes > 2)
        tiles.append(torch.sin(2 * math.pi * (kx * xx + ky * yy) / period + phase + math.pi / 4))
    return torch.stack(tiles)


def salient_mask(x_model: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per-sample 0/1 mask of the ``ratio`` fraction of pixels with the highest 5x5 local mean (the anatomy)."""
    pad = F.pad(x_model, (2, 2, 2, 2), mode="replicate")
    return topk_mask(F.avg_pool2d(pad, 5, stride=1), ratio)


def budget_scale(delta: torch.Tensor, span: torch.Tensor, psnr_db: float) -> torch.Tensor:
    """Per-sample factor ``<= 1`` that brings the mean squared ``delta`` down to the PSNR ``psnr_db`` of ``span``."""
    mse = delta.pow(2).flatten(1).mean(1)
    allowed = span.flatten().pow(2) / 10 ** (psnr_db / 10)
    return torch.sqrt(allowed / mse.clamp_min(1e-12)).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))


def slice_span(x_units: torch.Tensor) -> torch.Tensor:
    """Each sample's max - min in stored units (at least 1): the span a per-image PSNR budget is measured with."""
    return (x_units.flatten(1).amax(1) - x_units.flatten(1).amin(1)).clamp_min(1.0)


def rounded_budget_scale(delta: torch.Tensor, span: torch.Tensor, psnr_db: float, epsilon: float, *, tries: int,
                         shrink: float) -> torch.Tensor:
    """:func:`budget_scale` of ``delta``, then shrunk by ``shrink`` (at most ``tries`` times) for the samples whose
    delta, rounded to whole units and clipped to ``epsilon``, is still over the budget (rounding adds error)."""
    scale = budget_scale(delta, span, psnr_db)
    for _ in range(tries):
        over = budget_scale(torch.round(delta * scale).clamp(-epsilon, epsilon), span, psnr_db) < 1
        if not bool(over.any()):
            break
        scale = torch.where(over, scale * shrink, scale)
    return scale


def place(tiles: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, x_units: torch.Tensor, space: UnitSpace, *,
          epsilon: int, psnr_db: float, differentiable: bool = False) -> torch.Tensor:
    """Each sample's class tile (stored units), on its mask, scaled to the PSNR budget, rounded to whole units and
    clipped to the valid stored range. ``differentiable`` rounds straight-through (for the fit)."""
    h, w = x_units.shape[-2:]
    raw = tile_to(tiles.unsqueeze(1), h, w)[labels] * mask
    scale = rounded_budget_scale(raw.detach(), slice_span(x_units), psnr_db, epsilon, tries=8, shrink=0.93)
    scaled = raw * scale
    rounded = round_ste(scaled) if differentiable else torch.round(scaled)
    rounded = rounded.clamp(-epsilon, epsilon)
    return (x_units + rounded).clamp(space.lo, space.hi) - x_units


def fit_tiles(x_units: torch.Tensor, labels: torch.Tensor, space: UnitSpace, mask: torch.Tensor, *, epsilon: int,
              period: int, psnr_db: float, rounds: int, train_steps: int, noise_steps: int, batch_size: int,
              lr: float, step: float, seed: int, generator: torch.Generator, habits: tuple[str, ...] = HABITS,
              ensemble: tuple[str, ...] = ENSEMBLE, blank: int | None = None,
              progress: Callable[[str], None] | None = None) -> tuple[torch.Tensor, list[float]]:
    """Min-min fit of class tiles through random attacker habits; returns ``(tiles in units, accuracy per round)``.

    Args:
        x_units: ``(N, 1, H, W)`` stored-unit slices (float holding integers).
        labels: ``(N,)`` class indices; every class from 0 to ``labels.max()`` gets a tile.
        mask: ``(N, 1, H, W)`` 0/1 placement (:func:`salient_mask`).
        rounds: Min-min rounds (0: the gratings, unrefined).
        step: Sign-step size in stored units.
        blank: A class left without a pattern (its tile stays zero), or ``None``.
    """
    num_classes = int(labels.max()) + 1
    tiles = oriented_gratings(num_classes, period).to(x_units.device) * epsilon
    if blank is not None:
        tiles[blank] = 0
    energy = tiles.flatten(1).norm(dim=1).clamp_min(1e-6)
    history: list[float] = []
    if rounds == 0:
        return tiles, history
    models = [make_surrogate(arch, max(num_classes, 2), seed=seed + i, device=x_units.device)
              for i, arch in enumerate(ensemble)]
    opts = [torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4) for m in models]
    n = x_units.shape[0]

    def batch() -> torch.Tensor:
        return torch.randint(n, (min(batch_size, n),), generator=generator).to(x_units.device)

    def view(idx: torch.Tensor, t: torch.Tensor, differentiable: bool) -> torch.Tensor:
        xb = x_units[idx]
        d = place(t, labels[idx], mask[idx], xb, space.select(idx.cpu()), epsilon=epsilon, psnr_db=psnr_db,
                  differentiable=differentiable)
        return attacker_habit(space.select(idx.cpu()).to_model(xb + d), generator, habits=habits)

    for r in range(rounds):
        for m in models:
            m.train()
        for _ in range(train_steps):
            idx = batch()
            inp = view(idx, tiles, False).detach()
            for m, opt in zip(models, opts):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(m(inp), labels[idx]).backward()
                opt.step()
        for m in models:
            m.eval()
        for _ in range(noise_steps):
            idx = batch()
            t = tiles.detach().clone().requires_grad_(True)
            inp = view(idx, t, True)
            loss = sum(F.cross_entropy(m(inp), labels[idx]) for m in models)
            (grad,) = torch.autograd.grad(loss, t)
            t = (tiles - step * torch.sign(grad)).clamp(-epsilon, epsilon)
            # keep each class at its grating's energy: a class whose pattern fades is a class left unprotected
            norm = t.flatten(1).norm(dim=1).clamp_min(1e-6)
            tiles = (t * (energy / norm).view(-1, 1, 1)).clamp(-epsilon, epsilon).detach()
            if blank is not None:
                tiles[blank] = 0
        acc = _accuracy(models, x_units, labels, lambda idx: view(idx, tiles, False), batch_size)
        history.append(acc)
        if progress is not None:
            progress(f"robust fit round {r + 1}/{rounds}: surrogate accuracy {acc:.3f} through the habits")
    return tiles, history


@torch.no_grad()
def _accuracy(models: list[nn.Module], x_units: torch.Tensor, labels: torch.Tensor,
              view: Callable[[torch.Tensor], torch.Tensor], batch_size: int) -> float:
    correct = 0
    for start in range(0, x_units.shape[0], batch_size):
        idx = torch.arange(start, min(start + batch_size, x_units.shape[0]), device=x_units.device)
        inp = view(idx)
        logits = sum(m(inp).softmax(1) for m in models)
        correct += int((logits.argmax(1) == labels[idx]).sum())
    return correct / max(x_units.shape[0], 1)
