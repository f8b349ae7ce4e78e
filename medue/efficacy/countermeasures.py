"""Countermeasures an unauthorised trainer may apply to released images before training.

Each takes and returns ``(N, H, W)`` uint8 images. Training-time countermeasures (augmentation, adversarial
training) are flags of :func:`medue.efficacy.train.train_classifier` instead.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image
from scipy.ndimage import median_filter


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


def grayscale(images: np.ndarray) -> np.ndarray:
    """Grayscale conversion; the identity on single-channel images (recorded as such in results)."""
    return images


PREPROCESSING: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg_q10": lambda x: jpeg(x, quality=10),
    "bit_depth_3": lambda x: bit_depth(x, bits=3),
    "median_3x3": lambda x: median(x, size=3),
    "gaussian_blur_1": lambda x: gaussian_blur(x, sigma=1.0),
    "grayscale": grayscale,
}

#: Countermeasures evaluated by training, not preprocessing.
TRAINING = ("augmentation", "adversarial_training")

ALL = (*PREPROCESSING, *TRAINING)
