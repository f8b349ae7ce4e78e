"""The min-min (bi-level) optimisation shared by EM, SEM, SALM and UC.

Huang et al. (ICLR 2021) alternate two minimisations until the surrogate fits the perturbed data:
``train_steps`` optimiser steps of the surrogate on ``x + delta``, then ``inner_steps`` sign-gradient
steps that *decrease* the loss w.r.t. ``delta`` (error-minimising noise), stopping once training accuracy on
the perturbed data reaches ``stop_accuracy``. The hooks here add SEM's random inner noise (``rho``) and
SALM's sparse mask (``mask_fn``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medue.device import derive_seed, make_generator
from medue.protect.base import UnitSpace, batches, project, rows_per_pass
from medue.protect.masks import topk_mask
from medue.protect.stand_ins import attacker_view


class ProcessGroup(Protocol):
    """Where this process stands among those sharing a fit (:class:`medue.store.World` under ``torch.distributed``)."""

    rank: int
    size: int

    def sum(self, value: float, device: torch.device) -> float: ...
    def barrier(self) -> None: ...
    def broadcast_buffers(self, model: nn.Module) -> None: ...


@dataclass(frozen=True)
class OneProcess:
    """The fit in this process alone."""

    rank: int = 0
    size: int = 1

    def sum(self, value: float, device: torch.device) -> float:
        return value

    def barrier(self) -> None:
        return None

    def broadcast_buffers(self, model: nn.Module) -> None:
        return None


class RoundBuffers(Protocol):
    """The deltas of the last two rounds: ``read(r, rows, device)`` (round -1: zeros), ``write``, ``flush`` and
    ``array(r)`` (int16 ``(N, 1, H, W)``: an array, or rows on disk read a few at a time)."""

    def read(self, round_index: int, index: Any, device: torch.device) -> torch.Tensor: ...
    def write(self, round_index: int, index: slice, delta: torch.Tensor) -> None: ...
    def flush(self) -> None: ...
    def array(self, round_index: int) -> Any: ...


class RoundCheckpoint(Protocol):
    """Where a sample-wise fit keeps its delta buffers and its state after every round, and continues from
    (:class:`medue.store.FitCheckpoint`: files under the release's ``private/fit/``); ``world`` is the group the
    fit is shared by."""

    folder: Any
    not_continued: str | None
    world: ProcessGroup

    def buffers(self, shape: tuple[int, ...]) -> RoundBuffers: ...
    def load(self, shape: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, Any]] | None: ...
    def save(self, round_index: int, shape: tuple[int, ...], state: dict[str, Any]) -> None: ...


class MemoryBuffers:
    """:class:`RoundBuffers` in memory: two int16 arrays shaped like the slices (round ``r`` in array ``r % 2``).

    A subclass keeps them elsewhere by overriding ``__init__``, :meth:`array`, ``_rows``, ``_put`` and :meth:`flush`
    (:class:`medue.store.DeltaBuffers`: two files).
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(int(v) for v in shape)
        self._arrays: list[Any] = [np.zeros(self.shape, dtype=np.int16) for _ in range(2)]

    def array(self, round_index: int) -> Any:
        return self._arrays[round_index % 2]

    def _rows(self, round_index: int, index: Any) -> np.ndarray:
        return self._arrays[round_index % 2][index]

    def _put(self, round_index: int, index: slice, rows: np.ndarray) -> None:
        self._arrays[round_index % 2][index] = rows

    def read(self, round_index: int, index: Any, device: torch.device) -> torch.Tensor:
        """Rows ``index`` of round ``round_index``'s deltas as float32 on ``device`` (round -1: zeros)."""
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        if round_index < 0:
            n = len(range(*index.indices(self.shape[0]))) if isinstance(index, slice) else len(index)
            return torch.zeros((n, *self.shape[1:]), dtype=torch.float32, device=device)
        return torch.from_numpy(np.asarray(self._rows(round_index, index), dtype=np.float32)).to(device)

    def write(self, round_index: int, index: slice, delta: torch.Tensor) -> None:
        self._put(round_index, index, torch.round(delta).to(torch.int16).cpu().numpy())

    def flush(self) -> None:
        return None


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
    the mask. ``allowed`` (0/1) confines the delta to a region (body/foreground). A batch of large slices goes
    through the surrogate in passes of :func:`rows_per_pass` rows (the surrogate is frozen: each
    sample's gradient is the same either way, up to rounding, and the random draws are those of the whole batch).
    """
    model.eval()
    n = x.shape[0]
    per_pass = rows_per_pass(x.shape)
    for _ in range(steps):
        noise = torch.round(uniform_noise(x.shape, settings.rho, generator, x.device)) if settings.rho > 0 else None
        if per_pass >= n:
            d = delta.detach().clone().requires_grad_(True)
            inp = x + d if noise is None else x + d + noise
            loss = F.cross_entropy(model(space.to_model(inp)), y)
            (grad,) = torch.autograd.grad(loss, d)
        else:
            grad = torch.empty_like(delta)
            for sl in batches(n, per_pass):
                d = delta[sl].detach().clone().requires_grad_(True)
                inp = x[sl] + d if noise is None else x[sl] + d + noise[sl]
                loss = F.cross_entropy(model(space.select(sl).to_model(inp)), y[sl], reduction="sum") / n
                (grad[sl],) = torch.autograd.grad(loss, d)
        new = delta - settings.step * torch.sign(grad)
        if mask_fn is not None:
            new = new * mask_fn(grad, space.to_model(x), new)
        if allowed is not None:
            new = new * allowed
        delta = project(new, x, space, settings.epsilon)
    return delta.detach()


def train_surrogate(model: nn.Module, opt: torch.optim.Optimizer, x: Any, y: torch.Tensor,
                    delta: torch.Tensor | Callable[[torch.Tensor], torch.Tensor], space: UnitSpace, *,
                    settings: MinMinSettings, steps: int, generator: torch.Generator,
                    world: ProcessGroup = OneProcess()) -> None:
    """``steps`` SGD steps on random batches of ``x + delta`` (SEM: plus random noise).

    ``x`` is a tensor or anything indexed like one (:class:`medue.store.SliceStore`: slices read from disk);
    ``delta`` a tensor or a function of the row indices (deltas streamed from disk). Under a
    ``torch.distributed`` group every process draws the same ``size`` batches and trains on its own, ``model``
    (a ``DistributedDataParallel``) averaging the gradients. A batch of large slices goes through in passes of
    :func:`rows_per_pass` rows whose gradients add up to the batch's; batch normalisation then normalises each pass
    with its own statistics ("ghost" batches), the one difference from a single pass.
    """
    model.train()
    n = x.shape[0]
    b = min(settings.batch_size, n)
    per_pass = rows_per_pass((b, *x.shape[1:]))
    for _ in range(steps):
        idx = torch.randint(n, (b * world.size,), generator=generator)[world.rank * b:(world.rank + 1) * b]
        idx = idx.to(x.device)
        inp = x[idx] + (delta(idx) if callable(delta) else delta[idx])
        if settings.rho > 0:
            inp = inp + torch.round(uniform_noise(inp.shape, settings.rho, generator, x.device))
        opt.zero_grad(set_to_none=True)
        if per_pass >= b:
            loss = F.cross_entropy(model(space.select(idx).to_model(inp)), y[idx])
            loss.backward()
        else:
            passes = batches(b, per_pass)
            for k, sl in enumerate(passes):
                # under DistributedDataParallel the gradients are averaged across processes once, at the last pass
                sync = contextlib.nullcontext() if k == len(passes) - 1 or not hasattr(model, "no_sync") \
                    else model.no_sync()
                with sync:
                    pick = idx[sl]
                    loss = F.cross_entropy(model(space.select(pick).to_model(inp[sl])), y[pick], reduction="sum") / b
                    loss.backward()
        opt.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, space: UnitSpace,
             batch_size: int) -> float:
    model.eval()
    correct = 0
    for sl in batches(x.shape[0], min(batch_size, rows_per_pass(x.shape))):
        pred = model(space.select(sl).to_model(x[sl] + delta[sl])).argmax(1)
        correct += int((pred == y[sl]).sum())
    return correct / max(x.shape[0], 1)


def bilevel_samplewise(model: nn.Module, x: Any, y: torch.Tensor, space: UnitSpace, *,
                       settings: MinMinSettings, generator: torch.Generator, mask_fn: MaskFn | None = None,
                       allowed: torch.Tensor | Callable[[torch.Tensor, UnitSpace], torch.Tensor] | None = None,
                       progress: Callable[[str], None] | None = None, checkpoint: RoundCheckpoint | None = None
                       ) -> tuple[Any, list[float]]:
    """Bi-level loop with one delta per sample, streaming ``x`` batch by batch. Returns ``(delta, accuracy per
    round)``.

    ``x`` is a tensor or anything indexed like one (:class:`~medue.store.SliceStore`: slices read from disk a batch
    at a time); ``allowed`` a 0/1 tensor or a function of a batch and its space. Without ``checkpoint`` the deltas
    are kept in memory (:class:`MemoryBuffers`) and returned as a tensor on ``x``'s device; with one
    (:class:`RoundCheckpoint`, :class:`medue.store.FitCheckpoint` in the release path) they live in its buffers,
    every finished round is recorded, a fit continues from the last recorded round when the checkpoint allows it,
    and the returned delta is its int16 array of the last round (rows on disk: read them a few at a time). The
    processes of the checkpoint's ``world`` share the work; see :mod:`medue.store`. This module opens no file.
    """
    world: ProcessGroup = checkpoint.world if checkpoint is not None else OneProcess()
    device = x.device
    shape = tuple(int(v) for v in x.shape)
    n = shape[0]
    base_seed = int(torch.randint(2**62, (1,), generator=generator))
    train_model: nn.Module = model
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9, weight_decay=5e-4)
    buffers = checkpoint.buffers(shape) if checkpoint is not None else MemoryBuffers(shape)
    history: list[float] = []
    first = 0
    loaded = checkpoint.load(shape) if checkpoint is not None else None
    if loaded is not None:
        rec, state = loaded
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        history = list(state["history"])
        first = int(rec["round"]) + 1
        if progress:
            progress(f"continuing the fit from its checkpoint: round {first} of {settings.max_rounds} finished")
    elif checkpoint is not None and checkpoint.not_continued and progress:
        progress(f"not continuing the checkpoint in {checkpoint.folder}: {checkpoint.not_continued}; fitting from "
                 "round 1")
    done = bool(history) and history[-1] >= settings.stop_accuracy
    last = first - 1
    for r in range(first, settings.max_rounds if not done else first):
        train_surrogate(train_model, opt, x, y, lambda idx: buffers.read(r - 1, idx, device), space,
                        settings=settings, steps=settings.train_steps, generator=generator, world=world)
        world.broadcast_buffers(model)
        correct = 0
        for b, sl in enumerate(batches(n, settings.batch_size)):
            if b % world.size != world.rank:
                continue
            xb, sp = x[sl], space.select(sl)
            keep = allowed(xb, sp) if callable(allowed) else (None if allowed is None else allowed[sl])
            delta = error_minimizing_delta(model, xb, y[sl], buffers.read(r - 1, sl, device), sp, settings=settings,
                                           steps=settings.inner_steps, generator=make_generator(
                                               derive_seed(base_seed, r, b)), mask_fn=mask_fn, allowed=keep)
            buffers.write(r, sl, delta)
            with torch.no_grad():
                for part in batches(xb.shape[0], rows_per_pass(xb.shape)):
                    seen = model(sp.select(part).to_model(xb[part] + delta[part])).argmax(1)
                    correct += int((seen == y[sl][part]).sum())
        buffers.flush()
        acc = world.sum(correct, device) / max(n, 1)  # also the barrier: every process's deltas are written
        history.append(acc)
        last = r
        if checkpoint is not None and world.rank == 0:
            checkpoint.save(r, shape, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                       "generator": generator.get_state(), "history": history})
        world.barrier()
        if progress:
            progress(f"round {r + 1}/{settings.max_rounds}: surrogate accuracy on perturbed data {acc:.3f}")
        if acc >= settings.stop_accuracy:
            break
    if checkpoint is None:
        return torch.from_numpy(np.asarray(buffers.array(last), dtype=np.float32)).to(device) if last >= 0 \
            else torch.zeros(shape, device=device), history
    return (buffers.array(last) if last >= 0 else np.zeros(shape, dtype=np.int16)), history


def tile_to(noise: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tile class/cluster noise ``(K, C, h, w)`` periodically to ``(K, C, height, width)``."""
    h, w = noise.shape[-2:]
    reps = (-(-height // h), -(-width // w))
    return noise.repeat(1, 1, *reps)[..., :height, :width]


def _class_phases(num_classes: int, height: int, width: int, period: int) -> list[torch.Tensor]:
    """Per class, the phase (in periods) of every pixel along the class's direction (angle ``pi * k / K``)."""
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                          indexing="ij")
    return [(u * torch.cos(torch.tensor(torch.pi * k / num_classes))
             + v * torch.sin(torch.tensor(torch.pi * k / num_classes))) / period for k in range(num_classes)]


def grating(num_classes: int, height: int, width: int, period: int = 4, duty: float = 0.5) -> torch.Tensor:
    """``(K, 1, height, width)`` binary gratings in {-1, 1}, one orientation per class (angle ``pi * k / K``).

    With two classes: vertical and horizontal stripes, ``duty`` of each period on (0.5 and period 4: 2 px on,
    2 px off; 0.25: 1 px on, 3 off, a pulse train whose harmonics carry the pattern at period 4 and period 2 alike).
    A grating is unchanged by a flip along its stripes and only changes phase under a shift, so it stays the same
    shortcut under flips and crops.
    """
    out = []
    for phase in _class_phases(num_classes, height, width, period):
        if duty == 0.5:
            out.append(torch.where(torch.cos(2 * torch.pi * (phase + 0.125)) > 0, 1.0, -1.0))
        else:
            out.append(torch.where(torch.remainder(phase + 1e-6, 1.0) < duty, 1.0, -1.0))
    return torch.stack(out).unsqueeze(1)


def block_mask(scores: torch.Tensor, ratio: float, block: int) -> torch.Tensor:
    """0/1 mask over ``scores`` ``(K, 1, h, w)`` keeping the top ``ratio`` of ``block`` x ``block`` cells per row."""
    if block > 1:
        pooled = F.avg_pool2d(scores, block, ceil_mode=True)
        mask = topk_mask(pooled, ratio)
        return F.interpolate(mask, scale_factor=block, mode="nearest")[..., :scores.shape[-2], :scores.shape[-1]]
    return topk_mask(scores, ratio)


def bilevel_classwise_tiled(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                            space: UnitSpace, *, settings: MinMinSettings, generator: torch.Generator,
                            tile: int = 0, mask_ratio: float = 1.0, block: int = 1,
                            augment: tuple[str, ...] = (), init: str = "random", duty: float = 0.5,
                            placement: torch.Tensor | None = None, positive: bool = False,
                            progress: Callable[[str], None] | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Class-wise error-minimising noise, periodic with period ``tile`` and sparse, robust by construction.

    One ``tile`` x ``tile`` pattern per class (``tile=0``: one full-size pattern) repeated over the image, so the
    same noise fits every resolution and survives crops (a shift only changes its phase). At most ``mask_ratio``
    of each pattern's ``block`` x ``block`` cells are non-zero: the support is chosen by the size of the noise
    already there plus the gradient saliency accumulated over the round (SALM's sticky mask, per class), and
    re-chosen once per round. Both minimisations see ``attacker_view`` of ``x + delta`` (flip, shift, blur,
    noise). Returns ``(noise, support, accuracy per round)``; ``noise * support`` is the class pattern.
    """
    h, w = x.shape[-2:]
    th, tw = (tile, tile) if tile else (h, w)
    eps = settings.epsilon
    lo_noise = 0 if positive else -eps
    if init == "random":
        noise = (torch.randint(0, 2, (num_classes, 1, th, tw), generator=generator).float() * 2 - 1) * eps
    elif init == "grating":
        noise = grating(num_classes, th, tw, period=tile or 4, duty=duty) * eps
    else:
        noise = torch.zeros((num_classes, 1, th, tw))
    noise = noise.clamp(lo_noise, eps).to(x.device)
    support = block_mask(torch.rand((num_classes, 1, th, tw), generator=generator).to(x.device), mask_ratio, block) \
        if mask_ratio < 1.0 else torch.ones_like(noise)
    if init == "grating" and positive:
        # the stripes are the shortcut: the optimisation sets their strength, it does not move them
        support = (noise > 0).to(noise.dtype)
    # (built only for a refinement: torch's first optimiser imports torch._dynamo, seconds for a placed pattern)
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9, weight_decay=5e-4) \
        if settings.max_rounds > 0 else None
    history: list[float] = []
    n = x.shape[0]

    def expand(pattern: torch.Tensor) -> torch.Tensor:
        return tile_to(pattern, h, w)

    def place(full: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return full[y[idx]] if placement is None else full[y[idx]] * placement[idx]

    def view(inp_units: torch.Tensor, sp: UnitSpace) -> torch.Tensor:
        return attacker_view(sp.to_model(inp_units), augment, generator, noise_std=settings.rho / 255.0)

    for r in range(settings.max_rounds):
        assert opt is not None
        full = expand(noise * support)
        model.train()
        for _ in range(settings.train_steps):
            idx = torch.randint(n, (min(settings.batch_size, n),), generator=generator).to(x.device)
            inp = torch.clamp(x[idx] + place(full, idx), space.lo, space.hi)
            loss = F.cross_entropy(model(view(inp, space.select(idx))), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        saliency = torch.zeros_like(noise)
        order = torch.randperm(n, generator=generator).to(x.device)
        for sl in batches(n, settings.batch_size):
            idx = order[sl]
            for _ in range(settings.inner_steps):
                d = noise.detach().clone().requires_grad_(True)
                full = expand(d * support)
                inp = torch.clamp(x[idx] + place(full, idx), space.lo, space.hi)
                loss = F.cross_entropy(model(view(inp, space.select(idx))), y[idx])
                (grad,) = torch.autograd.grad(loss, d)
                saliency += grad.abs()
                noise = torch.clamp(torch.round(noise - settings.step * torch.sign(grad)), lo_noise, eps)
        if mask_ratio < 1.0:
            peak = saliency.flatten(1).amax(1).clamp_min(1e-30).view(-1, 1, 1, 1)
            support = block_mask((noise * support).abs() + 0.5 * saliency / peak, mask_ratio, block)
        everyone = torch.arange(n, device=x.device)
        per_sample = torch.clamp(x + place(expand(noise * support), everyone), space.lo, space.hi) - x
        acc = accuracy(model, x, y, per_sample, space, settings.batch_size)
        history.append(acc)
        if progress:
            progress(f"round {r + 1}/{settings.max_rounds}: surrogate accuracy on protected data {acc:.3f}")
        if acc >= settings.stop_accuracy:
            break
    return noise.detach(), support.detach(), history
