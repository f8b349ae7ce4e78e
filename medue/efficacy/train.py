"""Train an unauthorised classifier on (protected) images and measure clean-test accuracy.

Images come as uint8 ``(N, H, W)`` (divided by 255) or float ``(N, H, W)`` already in ``[0, 1]`` (resampled
images). The augmentation recipe (:mod:`medue.efficacy.augment`), optimiser and schedule are the attacker's habits
(:class:`medue.efficacy.suite.Attack`); the same code runs on CPU and GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medue.efficacy.attackers import ADAM_LR, ATTACKERS, DEFAULT_LR, build_attacker

ARCHITECTURES = ATTACKERS


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 15
    batch_size: int = 64
    lr: float | None = None  # None: DEFAULT_LR of the architecture (ADAM_LR with Adam)
    width: int = 16
    augmentation: bool = False  # flip + crop when ``recipe`` is None
    recipe: str | None = None  # a key of medue.efficacy.augment.RECIPES
    optimizer: str = "sgd_onecycle"  # sgd_onecycle | sgd_cosine | adam
    adversarial_epsilon: float = 0.0  # in [0, 1] model units (e.g. 4/255); 0 disables PGD training
    adversarial_steps: int = 3


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and random crop with 4-px reflect padding."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy, dx = torch.randint(0, 9, (2,), generator=gen).tolist()
    return padded[:, :, dy:dy + h, dx:dx + w]


def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """Error-maximising PGD examples (Madry et al.) for adversarial training."""
    alpha = 2.5 * eps / steps
    delta = torch.zeros_like(x).uniform_(-eps, eps)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(torch.clamp(x + delta, 0, 1)), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = torch.clamp(delta.detach() + alpha * grad.sign(), -eps, eps)
    return torch.clamp(x + delta, 0, 1).detach()


def _as_unit(x: np.ndarray) -> torch.Tensor:
    """``(N, H, W)`` uint8 (divided by 255) or float in [0, 1] as a float32 ``(N, 1, H, W)`` tensor."""
    x = np.asarray(x)
    t = torch.from_numpy(x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32))
    return t.unsqueeze(1)


def _optimiser(model: nn.Module, arch: str, settings: TrainSettings, total_steps: int
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    if settings.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=settings.lr or ADAM_LR), None
    lr = DEFAULT_LR[arch] if settings.lr is None else settings.lr
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    if settings.optimizer == "sgd_cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    if settings.optimizer == "sgd_onecycle":
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps)
    raise ValueError(f"unknown optimizer {settings.optimizer!r}; expected sgd_onecycle, sgd_cosine or adam")


#: Below this many optimiser steps the BatchNorm statistics are recomputed over the training images after training
#: (a self-evaluation of a small release); the benchmark sets train for hundreds of steps and are unaffected.
BN_RECALIBRATION_STEPS = 100


def train_classifier(arch: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                     *, settings: TrainSettings, seed: int, device: torch.device,
                     return_model: bool = False, progress: Callable[[int, int, float, float], None] | None = None
                     ) -> dict[str, float] | tuple[dict[str, float], nn.Module]:
    """Train ``arch`` on ``(N, H, W)`` images and return train and clean-test accuracy (and the model).

    ``progress(epoch, epochs, mean loss, accuracy on the epoch's training batches)`` is called after each epoch
    (numbers the training computed anyway: it changes nothing of the result).
    """
    from medue.efficacy.augment import apply_recipe, build_recipe

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    model = build_attacker(arch, num_classes, image_size=x_train.shape[-1], width=settings.width).to(device)
    xt = _as_unit(x_train)
    yt = torch.from_numpy(y_train.astype(np.int64))
    recipe = build_recipe(settings.recipe or ("flip_crop" if settings.augmentation else "none"), x_train.shape[-1])
    if recipe is not None:
        recipe.set_random_state(seed=seed % 2**32)
    steps_per_epoch = max(1, -(-len(xt) // settings.batch_size))
    opt, sched = _optimiser(model, arch, settings, settings.epochs * steps_per_epoch)
    for epoch in range(settings.epochs):
        model.train()
        seen, loss_sum, correct = 0, 0.0, 0
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), settings.batch_size):
            idx = perm[i:i + settings.batch_size]
            xb, yb = xt[idx].to(device), yt[idx].to(device)
            xb = apply_recipe(recipe, xb)
            if settings.adversarial_epsilon > 0:
                model.eval()
                xb = _pgd(model, xb, yb, settings.adversarial_epsilon, settings.adversarial_steps)
                model.train()
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if progress is not None:
                seen += len(yb)
                loss_sum += float(loss.detach()) * len(yb)
                correct += int((logits.detach().argmax(1) == yb).sum())
        if progress is not None:
            progress(epoch + 1, settings.epochs, loss_sum / max(seen, 1), correct / max(seen, 1))
    if settings.epochs * steps_per_epoch < BN_RECALIBRATION_STEPS:
        # a small release: BatchNorm's running statistics (momentum 0.1) have not converged after so few steps, and
        # the model in eval mode scores at chance although its training batches are right; recompute them over the
        # training images (torch.optim.swa_utils.update_bn: a cumulative average, no weight changes)
        from torch.optim.swa_utils import update_bn

        update_bn([xt[i:i + settings.batch_size].to(device) for i in range(0, len(xt), settings.batch_size)], model)
    result = {"train_accuracy": evaluate(model, x_train, y_train, device),
              "test_accuracy": evaluate(model, x_test, y_test, device)}
    return (result, model) if return_model else result


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Class predictions for ``(N, H, W)`` images (uint8, or float in [0, 1])."""
    model.eval()
    preds = []
    for i in range(0, len(x), batch_size):
        xb = _as_unit(x[i:i + batch_size]).to(device)
        preds.append(model(xb).argmax(1).cpu().numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device, batch_size: int = 256) -> float:
    return float((predict(model, x, device, batch_size) == y).mean()) if len(x) else 0.0
