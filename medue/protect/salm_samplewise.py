"""SALM as the paper runs it (``salm-samplewise``): Sun, Liu, Yan, Xu, Sun, "Medical Unlearnable Examples: Securing
Medical Data from Unauthorized Training via Sparsity-Aware Local Masking", arXiv 2403.10573, 2024.

Sample-wise error-minimising noise from the EM min-min loop (:class:`~medue.protect.em.EMProtector`), restricted at
every step to the top ``mask_ratio`` of ``|dL/dx|`` of the surrogate. Ours: the delta is projected onto the mask, so
its support never exceeds ``mask_ratio``; ``mask_update="sticky"`` keeps pixels already perturbed.
:func:`salm_perturb` is the single-batch pure function of the method.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medue.protect.base import UnitSpace
from medue.protect.em import EMProtector
from medue.protect.masks import topk_mask
from medue.protect.minmin import MaskFn, MinMinSettings, error_minimizing_delta

MASK_UPDATES = ("step", "sticky")


def saliency_mask_fn(ratio: float, update: str = "step") -> MaskFn:
    """Top-``ratio`` pixels per sample.

    ``update="step"`` ranks by gradient magnitude alone at every step. ``update="sticky"`` ranks first by
    the magnitude of the proposed delta, then by gradient magnitude (normalised to ``[0, 1)`` per sample, so it
    only breaks ties): pixels already perturbed keep their place and the noise can accumulate up to the budget.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1], not {ratio}")
    if update not in MASK_UPDATES:
        raise ValueError(f"mask_update must be one of {MASK_UPDATES}, not {update!r}")
    if update == "step":
        return lambda grad, x_model, proposed: topk_mask(grad.abs(), ratio)

    def sticky(grad: torch.Tensor, x_model: torch.Tensor, proposed: torch.Tensor) -> torch.Tensor:
        g = grad.abs()
        peak = g.flatten(1).amax(1).clamp_min(torch.finfo(g.dtype).tiny).view(-1, *([1] * (g.dim() - 1)))
        return topk_mask(proposed.abs() + 0.5 * g / peak, ratio)

    return sticky


def salm_perturb(model: nn.Module, x_units: torch.Tensor, labels: torch.Tensor, space: UnitSpace, *,
                 epsilon: int, step: int = 1, steps: int = 20, mask_ratio: float = 0.1, mask_update: str = "sticky",
                 generator: torch.Generator, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Sparse error-minimising delta for one batch against a fixed surrogate.

    Args:
        model: Surrogate classifier taking model-space ``(N, 1, H, W)`` input.
        x_units: Stored-unit images ``(N, 1, H, W)`` (float holding integers).
        labels: ``(N,)`` class indices the noise makes *easy* to predict.
        space: Stored units <-> model space.
        epsilon: L-inf budget in stored units.
        mask_ratio: Fraction of pixels that may change, in ``(0, 1]``.
        mask_update: ``"step"`` or ``"sticky"``, see :func:`saliency_mask_fn`.

    Returns:
        Integer delta, same shape as ``x_units``; non-zero on at most ``mask_ratio`` of each sample's pixels.
    """
    settings = MinMinSettings(epsilon=epsilon, step=step, inner_steps=steps)
    return error_minimizing_delta(model, x_units, labels, torch.zeros_like(x_units), space, settings=settings,
                                  steps=steps, generator=generator, mask_fn=saliency_mask_fn(mask_ratio, mask_update),
                                  allowed=allowed)


class SampleSALMProtector(EMProtector):
    """SALM as the paper runs it (Sun et al. 2024): sample-wise error-minimising noise on a sparse saliency mask.

    Args:
        mask_ratio: Fraction of pixels per slice that may change, in ``(0, 1]``.
        mask_update: ``"step"`` (re-rank by saliency every step) or ``"sticky"`` (keep perturbed pixels),
            see :func:`saliency_mask_fn`.
        **kwargs: :class:`~medue.protect.em.EMProtector` arguments (``mode`` is always sample-wise).
    """

    key = "salm-samplewise"
    looks_like = ("faint speckle on the most significant pixels of each image, different on every image")

    def __init__(self, *, mask_ratio: float = 0.1, mask_update: str = "sticky", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(mask_ratio, (int, float)) or not 0.0 < mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1], not {mask_ratio!r}")
        if mask_update not in MASK_UPDATES:
            raise ValueError(f"mask_update must be one of {MASK_UPDATES}, not {mask_update!r}")
        self.mask_ratio = float(mask_ratio)
        self.mask_update = mask_update

    def params(self) -> dict[str, Any]:
        return {**super().params(), "mask_ratio": self.mask_ratio, "mask_update": self.mask_update}

    def mask_fn(self) -> MaskFn:
        return saliency_mask_fn(self.mask_ratio, self.mask_update)

    @property
    def support_ratio(self) -> float:
        return self.mask_ratio


__all__ = ["MASK_UPDATES", "SampleSALMProtector", "saliency_mask_fn", "salm_perturb"]
