"""Differentiable stand-ins for what an attacker does to released images before and while training (the habits of
:mod:`medue.habits`, which names each of them once).

An error-minimising pattern is only a shortcut if it is still there after the attacker's pipeline. The fit of
:mod:`medue.protect.robust` therefore computes its loss on images that went through a random draw of these
transformations (expectation over transformation, :func:`attacker_habit`), so a change that a transformation erases
earns nothing:

* augmentation, as MONAI's tutorial recipes do it: flips, rotation by up to 15 degrees and zoom by 0.9-1.1 (bilinear),
  a shift (a crop at another place);
* resampling: area downsampling by 2, then bilinear back to the image size;
* purification: Gaussian smoothing (sigma 0.5-1.5), a 3x3 median (its gradient flows to the selected pixel),
  bit-depth reduction to 3 bits and JPEG quality 10 (8x8 block DCT quantised with the standard luminance table
  scaled for quality 10); both roundings pass the gradient straight through (Bengio et al. 2013), the
  differentiable-JPEG idea of Shin and Song (2017) in its simplest form;
* noise: Gaussian noise of a standard deviation of 0.02 (model space).

EM's min-min loop (:mod:`medue.protect.minmin`) and UC's generator see :func:`attacker_view` instead: a flip, a
circular shift, a 3x3 box blur and Gaussian noise (:data:`medue.habits.MINMIN_AUGMENTATIONS`).

All functions take and return model-space images ``(N, 1, H, W)`` (a volume's 0.5-99.5 percentile span is
``[0, 1]``, the scale the attacker's 8-bit export has), draw their randomness from a ``torch.Generator`` (the same
draws on every device) and keep the image size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medue.habits import FIT_HABITS

#: Names :func:`attacker_habit` draws from, in drawing order (:data:`medue.habits.FIT_HABITS`).
HABITS = FIT_HABITS

#: Standard JPEG luminance quantisation table (ITU-T T.81, Annex K).
_JPEG_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)


def _uniform(generator: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (hi - lo) + lo


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def flip_rotate_zoom(x: torch.Tensor, generator: torch.Generator, *, max_degrees: float = 15.0,
                     zoom: tuple[float, float] = (0.9, 1.1), max_shift: float = 0.125) -> torch.Tensor:
    """Random flips, rotation, zoom and shift (a fraction of the size), bilinear, zeros outside."""
    n = x.shape[0]
    angle = _uniform(generator, n, -max_degrees, max_degrees) * math.pi / 180
    scale = 1 / _uniform(generator, n, *zoom)
    flip_x = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    flip_y = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    shift = _uniform(generator, 2 * n, -2 * max_shift, 2 * max_shift).view(n, 2)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip_x, -sin * flip_y, shift[:, 0]], 1),
                         torch.stack([sin * flip_x, cos * flip_y, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def half_resolution(x: torch.Tensor) -> torch.Tensor:
    """Area downsampling by 2 and bilinear upsampling back to the size (the attacker trains at half size)."""
    small = F.avg_pool2d(x, 2, ceil_mode=True)
    return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing, reflect padding."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    pad = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(pad, k.view(1, 1, 1, -1))
    return F.conv2d(out, k.view(1, 1, -1, 1))


def median3(x: torch.Tensor) -> torch.Tensor:
    """3x3 median, reflect padding; the gradient reaches the pixel the median selected."""
    pad = F.pad(x, (1, 1, 1, 1), mode="reflect")
    patches = F.unfold(pad, 3)  # (N, 9, H*W) for one channel
    med = patches.median(dim=1).values
    return med.view(x.shape)


def bit_depth(x: torch.Tensor, bits: int = 3) -> torch.Tensor:
    """Quantise ``[0, 1]`` to ``2**bits`` levels (straight-through)."""
    levels = 2**bits - 1
    return round_ste(x.clamp(0, 1) * levels) / levels


def _dct_matrix(n: int = 8) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float32).view(-1, 1)
    i = torch.arange(n, dtype=torch.float32).view(1, -1)
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


def jpeg(x: torch.Tensor, quality: int = 10) -> torch.Tensor:
    """JPEG luminance compression of ``[0, 1]`` images at ``quality``: 8x8 block DCT, quantisation with the scaled
    standard table, rounding straight-through (no chroma, no entropy coding: they do not change a grey image)."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    table = torch.clamp(torch.floor((_JPEG_LUMA * scale + 50) / 100), 1, 255).to(x.device, x.dtype)
    d = _dct_matrix().to(x.device, x.dtype)
    n, c, h, w = x.shape
    ph, pw = (-h) % 8, (-w) % 8
    img = F.pad(x.clamp(0, 1) * 255 - 128, (0, pw, 0, ph), mode="replicate")
    H, W = img.shape[-2:]
    blocks = img.view(n, c, H // 8, 8, W // 8, 8).permute(0, 1, 2, 4, 3, 5)
    coef = d @ blocks @ d.T
    coef = round_ste(coef / table) * table
    back = (d.T @ coef @ d).permute(0, 1, 2, 4, 3, 5).reshape(n, c, H, W)
    return ((back + 128) / 255)[..., :h, :w]


def attacker_habit(x: torch.Tensor, generator: torch.Generator, *, habits: tuple[str, ...] = HABITS) -> torch.Tensor:
    """One random habit of :data:`HABITS` per call, applied to the whole batch; ``"augment"`` is also applied
    before every other habit with probability 1/2 (attackers purify and augment)."""
    pick = habits[int(torch.randint(len(habits), (1,), generator=generator))]
    if pick != "augment" and "augment" in habits and float(torch.rand(1, generator=generator)) < 0.5:
        x = flip_rotate_zoom(x, generator)
    if pick == "none":
        return x
    if pick == "augment":
        return flip_rotate_zoom(x, generator)
    if pick == "half_resolution":
        return half_resolution(x)
    if pick == "blur":
        return gaussian_blur(x, float(_uniform(generator, 1, 0.5, 1.5)))
    if pick == "median":
        return median3(x)
    if pick == "bit_depth_3":
        return bit_depth(x, 3)
    if pick == "jpeg_q10":
        return jpeg(x, 10)
    if pick == "noise":
        return x + 0.02 * torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    raise ValueError(f"unknown habit {pick!r}; expected one of {HABITS}")


def attacker_view(x_model: torch.Tensor, augment: tuple[str, ...], generator: torch.Generator, *,
                  max_shift: int = 4, noise_std: float = 0.0) -> torch.Tensor:
    """A random, differentiable version of a batch as an attacker's pipeline may show it to a model.

    ``flip``: horizontal flip of half the batch; ``shift``: one random circular shift of up to ``max_shift`` px
    (stands in for pad-and-crop); ``smooth``: a 3x3 box blur on half the batches (JPEG-like / median-like loss
    of fine detail); ``noise``: Gaussian noise of ``noise_std`` (SEM-style random perturbation).
    """
    if not augment:
        return x_model
    dev = x_model.device
    if "flip" in augment:
        flip = (torch.rand(x_model.shape[0], generator=generator) < 0.5).to(dev)
        x_model = torch.where(flip[:, None, None, None], x_model.flip(-1), x_model)
    if "shift" in augment and max_shift > 0:
        dy, dx = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)).tolist()
        x_model = torch.roll(x_model, shifts=(dy, dx), dims=(-2, -1))
    if "smooth" in augment and float(torch.rand(1, generator=generator)) < 0.5:
        x_model = F.avg_pool2d(F.pad(x_model, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    if "noise" in augment and noise_std > 0:
        x_model = x_model + noise_std * torch.randn(x_model.shape, generator=generator).to(dev)
    return x_model
