"""The clinical-utility gate: per-volume fidelity metrics checked against policy thresholds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medue.fidelity.metrics import volume_metrics


@dataclass(frozen=True)
class FidelityThresholds:
    """Release thresholds; ``None`` disables one. Units: dB, SSIM, stored units, physical units (HU), fraction."""

    min_psnr_db: float | None = 40.0
    min_ssim: float | None = 0.95
    max_abs_units: int | None = None
    max_abs_physical: float | None = None
    max_fraction_changed: float | None = None
    #: Span PSNR/SSIM use: ``"volume"`` (the original's max - min: strict for dark images) or ``"dtype"`` (the
    #: stored type's valid span, e.g. 255 for 8-bit images, the convention of the unlearnable-examples papers).
    data_range: str = "volume"

    def span(self, original: np.ndarray, valid_range: tuple[int, int] | None = None) -> float:
        """The data range these thresholds measure ``original`` with."""
        if self.data_range == "dtype" and valid_range is not None:
            return float(valid_range[1] - valid_range[0])
        return float(max(int(original.max()) - int(original.min()), 1)) if original.size else 1.0


@dataclass(frozen=True)
class FidelityReport:
    """Metrics of one volume and the thresholds they failed (empty ``failures`` means it passed)."""

    psnr_db: float
    ssim: float
    max_abs_units: int
    max_abs_physical: float
    fraction_changed: float
    data_range: float
    per_slice_psnr_db: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: The threshold each failure names (``min_psnr_db``, ``max_abs_units``...), in the order of ``failures``; not
    #: written out (the failures say it in words).
    failed_limits: list[str] = field(default_factory=list)
    #: Largest change relative to the local intensity of tissue (a bias field's measure; reported, not gated).
    max_relative_change: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        d.pop("failed_limits")
        for k in ("psnr_db",):
            if d[k] == float("inf"):
                d[k] = None  # JSON has no infinity: None means identical
        d["per_slice_psnr_db"] = [None if v == float("inf") else round(v, 3) for v in self.per_slice_psnr_db]
        return d


def check_fidelity(original: np.ndarray, protected: np.ndarray, thresholds: FidelityThresholds, *,
                   rescale_slope: float = 1.0, data_range: float | None = None,
                   valid_range: tuple[int, int] | None = None, device: Any = None,
                   budget_bytes: int | None = None) -> FidelityReport:
    """Compare ``protected`` with ``original`` (both ``(z, y, x)`` stored units) and apply ``thresholds``.

    Args:
        data_range: Span used by PSNR/SSIM, in stored units. Default: ``thresholds.span`` (the original's
            max - min, or with ``data_range="dtype"`` the ``valid_range`` span), stated in the report so the
            numbers can be reproduced.
        device: Where the metrics are computed (:func:`medue.fidelity.metrics.volume_metrics`; default CPU).
        budget_bytes: Working memory for the metrics (how many slices at a time; never changes a number).
    """
    if data_range is None:
        data_range = thresholds.span(original, valid_range)
    m = volume_metrics(original, protected, data_range=data_range, device=device, budget_bytes=budget_bytes)
    psnr, ssim, linf, frac, per_slice = m.psnr_db, m.ssim, m.max_abs_units, m.fraction_changed, m.per_slice_psnr_db
    failures, limits = [], []
    t = thresholds

    def fail(limit: str, text: str) -> None:
        failures.append(text)
        limits.append(limit)

    if t.min_psnr_db is not None and psnr < t.min_psnr_db:
        fail("min_psnr_db", f"PSNR {psnr:.2f} dB < minimum {t.min_psnr_db} dB")
    if t.min_ssim is not None and ssim < t.min_ssim:
        fail("min_ssim", f"SSIM {ssim:.4f} < minimum {t.min_ssim}")
    if t.max_abs_units is not None and linf > t.max_abs_units:
        fail("max_abs_units", f"max |delta| {linf} stored units > maximum {t.max_abs_units}")
    physical = linf * abs(rescale_slope)
    if t.max_abs_physical is not None and physical > t.max_abs_physical:
        fail("max_abs_physical", f"max |delta| {physical:g} physical units > maximum {t.max_abs_physical}")
    if t.max_fraction_changed is not None and frac > t.max_fraction_changed:
        fail("max_fraction_changed", f"fraction changed {frac:.4f} > maximum {t.max_fraction_changed}")
    return FidelityReport(psnr_db=psnr, ssim=ssim, max_abs_units=linf, max_abs_physical=physical,
                          fraction_changed=frac, data_range=data_range, per_slice_psnr_db=per_slice,
                          failures=failures, failed_limits=limits, max_relative_change=round(m.max_relative_change, 4))
