"""Floating-point images in whole units: a float image is protected as whole multiples of a step (``protect.unit``)
and written back in its own float type, only when that round trip is exact bit for bit (so a release restores
bit-exactly). Used by the NIfTI and MetaImage/NRRD readers and writers."""

from __future__ import annotations

import numpy as np

from medue.errors import ExportError, IngestError


def float_to_units(raw: np.ndarray, unit: float, label: str) -> np.ndarray:
    """``raw / unit`` as int32 when every voxel of ``raw`` is exactly (bit for bit) ``float(k * unit)`` for a whole
    ``k`` inside the range the float type holds exactly; otherwise :class:`IngestError` ``unsupported``."""
    exact = 2 ** (np.finfo(raw.dtype).nmant + 1) - 1
    units = np.rint(raw.astype(np.float64) / unit) + 0.0  # (+ 0.0: a whole unit has no sign of zero)
    back = (units * unit).astype(raw.dtype)
    bits = np.dtype(f"u{raw.dtype.itemsize}")  # compare bit patterns: -0.0 is not 0.0 in a bit-exact release
    off = np.ascontiguousarray(back).view(bits) != np.ascontiguousarray(raw).view(bits)
    off |= np.abs(units) > min(exact, np.iinfo(np.int32).max)
    if off.any():
        negative_zero = int(np.count_nonzero(off & (raw == 0)))
        if negative_zero == int(off.sum()):
            raise IngestError(
                f"{label}: {negative_zero} of {raw.size} voxels hold negative zero (-0.0), which whole units of "
                "protect.unit cannot give back bit for bit; expected +0.0; replace them with 0.0 (the same value) "
                "before release", source=label, reason="unsupported")
        rem = np.abs(raw.astype(np.float64) - units * unit)[off]
        raise IngestError(
            f"{label}: {int(off.sum())} of {raw.size} voxels are not whole multiples of protect.unit {unit:g} "
            f"(largest remainder {float(rem.max()):.6g}); expected values on steps of the unit, so that the release "
            "restores bit-exactly; set protect.unit to the image's real step, or convert the image to integers "
            "yourself", source=label, reason="unsupported")
    return units.astype(np.int32)


def units_to_float(units: np.ndarray, unit: float, dtype: np.dtype) -> np.ndarray:
    """The float voxels of whole ``units`` of ``unit`` (inverse of :func:`float_to_units`)."""
    return (units.astype(np.float64) * unit).astype(dtype)


def float_header(dtype: np.dtype, unit: float) -> dict:
    """The header entries of a float image read in whole ``unit`` steps: the unit, its float type and the range
    of whole units that type holds exactly (the protection's clipping range)."""
    exact = 2 ** (np.finfo(dtype).nmant + 1) - 1
    return {"float_unit": float(unit), "float_dtype": np.dtype(dtype).str,
            "valid_range": (-exact, exact)}


def units_to_float_exact(units: np.ndarray, unit: float, dtype: np.dtype) -> np.ndarray:
    """:func:`units_to_float`, refused (:class:`ExportError`) unless the float values read back as the same whole
    units: a release that would not restore bit-exactly is not written."""
    values = units_to_float(units, unit, dtype)
    try:
        same = np.array_equal(float_to_units(values, unit, "the protected image"), units)
    except IngestError:
        same = False
    if not same:
        raise ExportError(f"the protected values do not read back as the same whole units of protect.unit {unit:g} "
                          f"in {np.dtype(dtype)}; a release must restore bit-exactly, so it is not written")
    return values
