"""Fidelity metrics between an original and a protected image. Pure numpy; ``data_range`` is always explicit.

PSNR and SSIM are scikit-image's (``peak_signal_noise_ratio``'s formula, with the squared error of a volume summed
slice by slice; ``structural_similarity`` per slice, each slice cast to float64 on its own so memory stays a few
slices); medue only insists that the caller states the data range instead of letting it be guessed from the dtype.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _check(image_true: np.ndarray, image_test: np.ndarray, data_range: float) -> None:
    if image_true.shape != image_test.shape:
        raise ValueError(f"images must have the same shape, got {image_true.shape} and {image_test.shape}")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0 (the span of valid values, e.g. 255 or a HU window), not {data_range}")


def compute_psnr(image_true: np.ndarray, image_test: np.ndarray, *, data_range: float) -> float:
    """PSNR in dB; ``inf`` for identical images."""
    _check(image_true, image_test, data_range)
    if np.array_equal(image_true, image_test):
        return float("inf")
    if image_true.ndim < 3:
        return float(peak_signal_noise_ratio(image_true.astype(np.float64), image_test.astype(np.float64),
                                             data_range=data_range))
    # scikit-image's formula, 10 log10(range^2 / MSE), with the squared error summed slice by slice
    squared = sum(float(np.sum((s.astype(np.float64) - t.astype(np.float64)) ** 2))
                  for s, t in zip(image_true, image_test))
    return float(10 * np.log10(data_range ** 2 / (squared / image_true.size)))


def compute_ssim(image_true: np.ndarray, image_test: np.ndarray, *, data_range: float) -> float:
    """Mean SSIM over 2D slices (Gaussian-free 7x7 window, or the largest odd size that fits small images)."""
    _check(image_true, image_test, data_range)
    a = image_true[None] if image_true.ndim == 2 else image_true
    b = image_test[None] if image_test.ndim == 2 else image_test
    win = min(7, *a.shape[-2:])
    win = win if win % 2 == 1 else win - 1
    if win < 3:
        return 1.0 if np.array_equal(a, b) else 0.0
    # one slice at a time in float64: memory stays a few slices, not two float64 copies of the volume
    return float(np.mean([structural_similarity(s.astype(np.float64), t.astype(np.float64), data_range=data_range,
                                                win_size=win) for s, t in zip(a, b)]))


def max_abs_diff(image_true: np.ndarray, image_test: np.ndarray) -> int:
    """Largest absolute difference in stored units."""
    if image_true.size == 0:
        return 0
    if image_true.ndim < 3:
        return int(np.abs(image_true.astype(np.int64) - image_test.astype(np.int64)).max())
    return max(int(np.abs(s.astype(np.int64) - t.astype(np.int64)).max()) for s, t in zip(image_true, image_test))


def fraction_changed(image_true: np.ndarray, image_test: np.ndarray) -> float:
    """Fraction of voxels whose stored value changed."""
    return float(np.count_nonzero(image_true != image_test) / max(image_true.size, 1))
