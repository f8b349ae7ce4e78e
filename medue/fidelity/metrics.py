"""Fidelity metrics between an original and a protected image; ``data_range`` is always explicit.

PSNR and SSIM follow scikit-image (``peak_signal_noise_ratio``: 10 log10(range^2 / MSE); ``structural_similarity``
per 2D slice with its defaults: a 7x7 uniform window, or the largest odd size that fits, sample covariance, K1 0.01,
K2 0.03, the mean over the window positions that lie wholly inside the slice). :func:`volume_metrics` computes every
number the release gate needs in one pass with torch, in float64, a few slices at a time, on the device the
protection ran on (the GPU when there is one, the CPU otherwise: the same code). ``tests/fidelity`` checks it
against scikit-image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_K1, _K2 = 0.01, 0.03


def _check(image_true: np.ndarray, image_test: np.ndarray, data_range: float) -> None:
    if image_true.shape != image_test.shape:
        raise ValueError(f"images must have the same shape, got {image_true.shape} and {image_test.shape}")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0 (the span of valid values, e.g. 255 or a HU window), not {data_range}")


@dataclass(frozen=True)
class VolumeMetrics:
    """One pass over a volume: PSNR (``inf`` when identical), mean slice SSIM, max |delta| in stored units, the
    fraction of voxels changed and the PSNR of every slice."""

    psnr_db: float
    ssim: float
    max_abs_units: int
    fraction_changed: float
    per_slice_psnr_db: list[float]
    #: Largest change relative to the local intensity of tissue (7x7 means; :func:`_relative_change`): 0.1 is a
    #: 10 % gain change, the order of an MRI bias field that readers read through.
    max_relative_change: float = 0.0


def _psnr(squared: float, count: int, data_range: float) -> float:
    return float("inf") if squared == 0 else float(10 * np.log10(data_range ** 2 / (squared / count)))


def _window(shape: tuple[int, ...]) -> int:
    win = min(7, *shape[-2:])
    return win if win % 2 == 1 else win - 1


def _box_mean(t: torch.Tensor, win: int) -> torch.Tensor:
    """``win`` x ``win`` uniform filter of ``(n, h, w)`` at the valid positions, *transposed* (only means over
    positions and elementwise ratios of such maps are taken). From running sums: stored values are integers, so every
    sum is exact (along rows, then along columns of the transposed copy: a running sum along the last axis is fast)."""
    c = F.pad(t.cumsum(-1), (1, 0))
    t = (c[..., win:] - c[..., :-win]).transpose(-1, -2).contiguous()
    c = F.pad(t.cumsum(-1), (1, 0))
    return (c[..., win:] - c[..., :-win]) / (win * win)


#: :func:`volume_metrics` measures the change relative to local intensity where the local mean is at least this
#: fraction of the slice's span above its minimum (tissue, not background).
RELATIVE_TISSUE_LEVEL = 0.2


def _relative_change(a: torch.Tensor, d: torch.Tensor, win: int) -> float:
    """Largest ``|local mean of delta| / local intensity`` over the tissue windows of ``(n, h, w)`` slices: the
    amplitude of a smooth change as a fraction of the intensity it sits on (a bias field's measure). Intensity is
    counted from each slice's minimum (stored units may carry an offset, as CT's -1024 does)."""
    low = a.flatten(1).amin(1).view(-1, 1, 1)
    span = (a.flatten(1).amax(1).view(-1, 1, 1) - low).clamp_min(1.0)
    level = a - low
    ua, ud = _box_mean(level, win), _box_mean(d, win)
    tissue = ua >= RELATIVE_TISSUE_LEVEL * span
    if not bool(tissue.any()):
        return 0.0
    return float((ud.abs() / ua.clamp_min(1e-9))[tissue].max())


def _ssim_slices(a: torch.Tensor, b: torch.Tensor, data_range: float, win: int) -> torch.Tensor:
    """SSIM of each ``(n, h, w)`` slice pair, as ``skimage.metrics.structural_similarity`` computes it."""
    def mean(t: torch.Tensor) -> torch.Tensor:
        return _box_mean(t, win)

    ux, uy = mean(a), mean(b)
    cov_norm = win * win / (win * win - 1.0)
    vx = cov_norm * (mean(a * a) - ux * ux)
    vy = cov_norm * (mean(b * b) - uy * uy)
    vxy = cov_norm * (mean(a * b) - ux * uy)
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2))


def volume_metrics(image_true: np.ndarray, image_test: np.ndarray, *, data_range: float,
                   device: torch.device | str | None = None, budget_bytes: int | None = None) -> VolumeMetrics:
    """Every fidelity number of ``image_test`` against ``image_true`` (2D, or ``(z, y, x)`` slices) in one pass.

    Args:
        data_range: Span PSNR and SSIM are measured with, in stored units.
        device: Where to compute (default CPU); results are the same to float64 rounding.
        budget_bytes: Working memory per chunk of slices (default 256 MB on CPU, 1 GB on a GPU).
    """
    _check(image_true, image_test, data_range)
    a3 = image_true[None] if image_true.ndim == 2 else image_true
    b3 = image_test[None] if image_test.ndim == 2 else image_test
    device = torch.device(device or "cpu")
    if a3.size == 0:
        return VolumeMetrics(float("inf"), 1.0, 0, 0.0, [])
    budget = budget_bytes or (2**30 if device.type == "cuda" else 2**28)
    per_slice_bytes = 8 * 14 * int(np.prod(a3.shape[1:]))  # float64 inputs, products and filtered maps
    chunk = max(1, budget // max(per_slice_bytes, 1))
    win = _window(a3.shape)
    squared, ssim, linf, changed, relative = [], [], 0, 0, 0.0
    for s in range(0, a3.shape[0], chunk):
        a = torch.from_numpy(np.ascontiguousarray(a3[s:s + chunk], dtype=np.float64)).to(device)
        b = torch.from_numpy(np.ascontiguousarray(b3[s:s + chunk], dtype=np.float64)).to(device)
        d = b - a
        per_slice = (d * d).sum(dim=(1, 2))
        squared.append(per_slice.cpu())
        linf = max(linf, int(d.abs().max()))
        changed += int(torch.count_nonzero(d))
        if win >= 3:
            # an unchanged slice has SSIM 1 exactly (every window's ratio is x/x): only changed slices are filtered
            # (a release's blank class, or a volume whose noise missed some slices, costs no SSIM at all)
            moved = per_slice > 0
            values = torch.ones(a.shape[0], dtype=torch.float64, device=a.device)
            if bool(moved.any()):
                values[moved] = _ssim_slices(a[moved], b[moved], data_range, win)
                relative = max(relative, _relative_change(a[moved], d[moved], win))
            ssim.append(values.cpu())
        else:  # too small for a window: identical or not
            ssim.append(torch.tensor([1.0 if bool(torch.equal(x, y)) else 0.0 for x, y in zip(a, b)]))
    sq = torch.cat(squared).tolist()
    per_slice_voxels = int(np.prod(a3.shape[1:]))
    return VolumeMetrics(psnr_db=_psnr(sum(sq), a3.size, data_range), ssim=float(torch.cat(ssim).mean()),
                         max_abs_units=linf, fraction_changed=changed / a3.size,
                         per_slice_psnr_db=[_psnr(v, per_slice_voxels, data_range) for v in sq],
                         max_relative_change=relative)


def compute_psnr(image_true: np.ndarray, image_test: np.ndarray, *, data_range: float) -> float:
    """PSNR in dB; ``inf`` for identical images."""
    return volume_metrics(image_true, image_test, data_range=data_range).psnr_db


def compute_ssim(image_true: np.ndarray, image_test: np.ndarray, *, data_range: float) -> float:
    """Mean SSIM over 2D slices (7x7 uniform window, or the largest odd size that fits small images)."""
    return volume_metrics(image_true, image_test, data_range=data_range).ssim


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
