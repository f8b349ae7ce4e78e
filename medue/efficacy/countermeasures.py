"""Countermeasures an unauthorised trainer may apply to released images before training.

Each takes and returns ``(N, H, W)`` uint8 images; :data:`PREPROCESSING` holds them under their names in
:mod:`medue.habits`. Training-time countermeasures (augmentation, adversarial training) are flags of
:func:`medue.efficacy.train.train_classifier` instead.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image
from scipy.ndimage import median_filter

from medue.habits import PURIFICATIONS


def jpeg(images: np.ndarray, *, quality: int = 10) -> np.ndarray:
    """JPEG re-encoding at ``quality`` (lower is stronger)."""
    out = np.empty_like(images)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    return out


def bit_depth(images: np.ndarray, *, bits: int = 3) -> np.ndarray:
    """Bit-depth squeezing to ``bits`` bits per pixel (feature squeezing)."""
    levels = 2**bits - 1
    return np.round(np.round(images / 255.0 * levels) / levels * 255.0).astype(np.uint8)


def median(images: np.ndarray, *, size: int = 3) -> np.ndarray:
    """Median filter of ``size`` x ``size`` per image."""
    return median_filter(images, size=(1, size, size))


def gaussian_blur(images: np.ndarray, *, sigma: float = 1.0) -> np.ndarray:
    """Gaussian smoothing of ``sigma`` px per image (MONAI ``GaussianSmooth``), rounded back to uint8."""
    import torch
    from monai.transforms import GaussianSmooth

    smooth = GaussianSmooth(sigma=sigma)
    out = np.empty_like(images)
    for i, img in enumerate(images):
        s = smooth(torch.from_numpy(img.astype(np.float32))[None])
        out[i] = np.clip(np.rint(np.asarray(s)[0]), 0, 255).astype(np.uint8)
    return out


def _spectral(images: np.ndarray, keep: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Each image multiplied in the Fourier domain by ``keep(radius in cycles per side)``, mean kept, rounded."""
    h, w = images.shape[-2:]
    ky = np.fft.fftfreq(h) * h
    kx = np.fft.fftfreq(w) * w
    radius = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    gain = keep(radius)
    gain[0, 0] = 1.0
    out = np.fft.ifft2(np.fft.fft2(images.astype(np.float64)) * gain).real
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def band_stop(images: np.ndarray, *, low: float = 2.5, high: float = 6.5) -> np.ndarray:
    """An informed attacker who knows the protection is a low-frequency field: every component between ``low`` and
    ``high`` cycles per image side removed (the ``fields`` carrier sits at 4)."""
    return _spectral(images, lambda r: ((r < low) | (r > high)).astype(np.float64))


def high_pass(images: np.ndarray, *, cutoff: float = 6.5) -> np.ndarray:
    """Every component below ``cutoff`` cycles per side removed but the mean (what a field or a bias field is made
    of, and the head's shape with it)."""
    return _spectral(images, lambda r: (r > cutoff).astype(np.float64))


def detrend(images: np.ndarray, *, sigma_fraction: float = 1 / 16) -> np.ndarray:
    """Per-image bias-field correction as MRI pipelines do it (after N4's idea, simplified): the image divided by
    its heavy Gaussian smoothing (sigma ``sigma_fraction`` of the side) on the head, rescaled to the image's mean."""
    from scipy.ndimage import gaussian_filter

    out = np.empty_like(images)
    for i, img in enumerate(images.astype(np.float64)):
        sigma = sigma_fraction * max(img.shape)
        head = img > 0.08 * img.max()
        smooth = gaussian_filter(img * head, sigma) / np.maximum(gaussian_filter(head.astype(float), sigma), 1e-3)
        corrected = np.where(head, img / np.maximum(smooth, 1.0) * img[head].mean() if head.any() else img, img)
        out[i] = np.clip(np.rint(corrected), 0, 255).astype(np.uint8)
    return out


def grayscale(images: np.ndarray) -> np.ndarray:
    """Grayscale conversion; the identity on single-channel images (recorded as such in results)."""
    return images


#: The purifications of :data:`medue.habits.PURIFICATIONS`, by their one name.
PREPROCESSING: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg_q10": lambda x: jpeg(x, quality=10),
    "bit_depth_3": lambda x: bit_depth(x, bits=3),
    "median": lambda x: median(x, size=3),
    "blur": lambda x: gaussian_blur(x, sigma=1.0),
    "band_stop": band_stop,
    "high_pass": high_pass,
    "detrend": detrend,
    "grayscale": grayscale,
}
assert set(PREPROCESSING) == set(PURIFICATIONS), "every purification of medue.habits has its function here"
