"""Masks shared by protectors: body/foreground and sparse top-k saliency."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def foreground_mask(x_model: torch.Tensor, *, threshold: float = 0.1, dilate: int = 1) -> torch.Tensor:
    """Body/foreground mask of model-space images ``(N, 1, H, W)``: above ``threshold``, dilated by ``dilate`` px.

    Returns a float tensor of 0/1 with the input's shape, device and dtype.
    """
    mask = (x_model > threshold).to(x_model.dtype)
    if dilate > 0:
        k = 2 * dilate + 1
        mask = F.max_pool2d(mask, kernel_size=k, stride=1, padding=dilate)
    return mask


def topk_mask(scores: torch.Tensor, ratio: float, *, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mask of the ``ratio`` fraction of pixels with the largest ``scores``.

    Args:
        scores: ``(N, C, H, W)`` saliency (e.g. ``|dL/dx|``).
        ratio: Fraction of pixels kept per sample, in ``(0, 1]``; ``k = max(1, floor(ratio * C*H*W))``.
        allowed: Optional 0/1 mask; pixels outside it are never selected (and ``k`` never exceeds its size).

    Returns:
        0/1 float mask with exactly ``k`` ones per sample (fewer only if ``allowed`` has fewer pixels).
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"mask ratio must be in (0, 1], not {ratio}")
    n = scores.shape[0]
    flat = scores.reshape(n, -1).clone()
    k = max(1, int(ratio * flat.shape[1]))
    if allowed is not None:
        allowed_flat = allowed.reshape(n, -1) > 0
        flat[~allowed_flat] = -torch.inf
    idx = torch.topk(flat, k, dim=1).indices
    mask = torch.zeros_like(flat)
    mask.scatter_(1, idx, 1.0)
    if allowed is not None:
        mask = mask * allowed_flat.to(mask.dtype)
    return mask.reshape(scores.shape)


def _local_mean_std(x_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pad = F.pad(x_model, (1, 1, 1, 1), mode="replicate")
    mean = F.avg_pool2d(pad, 3, stride=1)
    var = (F.avg_pool2d(pad * pad, 3, stride=1) - mean * mean).clamp_min(0)
    return mean, var.sqrt()


def flat_region_mask(x_model: torch.Tensor, ratio: float, *, max_level: float | None = 0.15) -> torch.Tensor:
    """Per-sample mask of at most ``ratio`` of the pixels, in the darkest, flattest places of each image.

    Score = 3x3 local mean + 3x3 local standard deviation (model space, where the volume's 0.5-99.5 percentile
    span is [0, 1]); the lowest-scored pixels are kept, and only where the local mean is below ``max_level``
    (``None``: no level, always ``ratio``). In medical images these are air and background outside the body, where
    a change does not touch anatomy, and where a pattern stands out to a model because nothing else varies there.
    An image without such background gets fewer (or no) changed pixels.
    """
    mean, std = _local_mean_std(x_model)
    mask = topk_mask(-(mean + std), ratio)
    return mask if max_level is None else mask * (mean < max_level).to(mask.dtype)
