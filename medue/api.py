"""The library API: protect volumes in memory or a folder on disk, from Python, a MONAI pipeline or an orchestrator.

Three calls cover what the command line does:

* :func:`fit` learns a protector over a whole set of volumes (the dataset-level step of every method);
* :func:`protect_volume` applies a fitted protector to one volume (a NumPy array or a :class:`~medue.Volume`) and
  checks its fidelity, returning a :class:`ProtectResult`;
* :func:`protect_folder` runs the release job on a folder (exactly what ``medue run`` runs) and returns its
  per-item records, with a progress callback.

:class:`medue.transforms.ProtectD` wraps :func:`protect_volume` as a MONAI dictionary transform.

Float volumes. medue's budget is a whole number of *stored units*; a float array (e.g. a float32 NIfTI from a
research pipeline) has none, so one unit is defined as ``unit`` (default: the array's 0.5-99.5 percentile span /
255, an 8-bit step of its intensity range). The protector works on the array expressed in such units and the
result is ``array + k * unit`` with integer ``|k| <= epsilon``, so the change is bounded by ``epsilon * unit`` in the
array's own values, never clipped outside the array's own min..max.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from medue.device import derive_seed, resolve_device
from medue.errors import InvalidVolumeError
from medue.fidelity.checks import FidelityReport, FidelityThresholds, check_fidelity
from medue.pipeline.fit import fit_slices
from medue.protect import build_protector
from medue.protect.base import Protector, UnitSpace
from medue.provenance import fingerprint_array
from medue.volume import Geometry, SourceRef, Volume


@dataclass
class ProtectResult:
    """One protected volume.

    Attributes:
        array: The protected array, same shape and dtype as the input (float input stays float).
        delta: ``array - input`` in the input's own values.
        fidelity: PSNR, SSIM, max |delta|, fraction changed and the failures against ``thresholds``.
        volume: The protected :class:`~medue.Volume` (integer input) with the protection step in its history.
        unit: The size of one budget unit in the input's values (1 for integer input).
        unchanged_on_purpose: The protector leaves this item's class unchanged (a class-wise method's blank class):
            ``passed`` is then true with nothing changed, and the item carries no protection.
    """

    array: np.ndarray
    delta: np.ndarray
    fidelity: FidelityReport
    volume: Volume | None = None
    unit: float = 1.0
    unchanged_on_purpose: bool = False

    @property
    def passed(self) -> bool:
        return self.fidelity.passed


@dataclass
class _Units:
    """An input expressed as a Volume in whole units, and how to go back to the input's values."""

    volume: Volume
    unit: float = 1.0
    base: float = 0.0
    float_input: np.ndarray | None = field(default=None, repr=False)


def _as_units(data: np.ndarray | Volume, unit: float | None) -> _Units:
    if isinstance(data, Volume):
        return _Units(data)
    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InvalidVolumeError(f"expected a (z, y, x) or (y, x) array, got shape {arr.shape}")
    source = SourceRef(paths=("memory",), sha256=(fingerprint_array(arr),), format="memory")
    if np.issubdtype(arr.dtype, np.integer):
        vol = Volume(array=arr, geometry=Geometry(affine=np.eye(4)), modality="OT", source=source)
        return _Units(vol)
    if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
        raise InvalidVolumeError(f"expected integer or finite floating-point values, got {arr.dtype}"
                                 + ("" if not np.issubdtype(arr.dtype, np.floating) else " with NaN or inf"))
    lo_p, hi_p = np.percentile(arr, [0.5, 99.5])
    step = float(unit) if unit is not None else float(max(hi_p - lo_p, np.finfo(np.float32).eps) / 255.0)
    if not step > 0:
        raise InvalidVolumeError(f"unit must be positive, got {unit!r}")
    base = float(arr.min())
    levels = np.rint((arr.astype(np.float64) - base) / step)
    if levels.max() > np.iinfo(np.int32).max:
        raise InvalidVolumeError(f"unit {step:g} is too small for this array's range; give a larger unit")
    q = levels.astype(np.int32)
    vol = Volume(array=q, geometry=Geometry(affine=np.eye(4)), modality="OT", source=source,
                 header={"valid_range": (0, int(q.max()))})
    return _Units(vol, step, base, arr)


def fit(volumes: Sequence[np.ndarray | Volume], labels: Sequence[int] | None = None, *, key: str,
        method: str = "lines", params: Mapping[str, Any] | None = None, device: str = "auto",
        unit: float | None = None, release_name: str = "release") -> Protector:
    """Fit ``method`` over every slice of ``volumes`` (one in-plane size) and return the fitted protector.

    Args:
        volumes: Arrays ``(z, y, x)`` / ``(y, x)`` or Volumes; float arrays as described in the module docstring.
        labels: One class index per volume (class-wise methods need them), or ``None``.
        key: The site's secret; the fit is deterministic for it.
        method, params: As ``protect.method`` / ``protect.params`` in a pipeline config.
        release_name: As ``name`` in a pipeline config: with the same key, the fit draws the same random numbers
            as ``medue run`` of that release (:func:`medue.pipeline.fit.fit_seed`).
    """
    if not volumes:
        raise InvalidVolumeError("fit needs at least one volume")
    protector = build_protector(method, **dict(params or {}))
    dev = resolve_device(device)
    units = [_as_units(v, unit) for v in volumes]
    shapes = {u.volume.array.shape[1:] for u in units}
    if len(shapes) > 1:
        raise InvalidVolumeError(f"volumes have in-plane sizes {sorted(shapes)}; fit needs one size (resample "
                                 "first, or use protect_folder, which resizes for the fit)")
    if labels is not None and len(labels) != len(volumes):
        raise InvalidVolumeError(f"{len(labels)} labels for {len(volumes)} volumes; give one label per volume")
    spaces = [UnitSpace.for_volume(u.volume) for u in units]
    counts = [u.volume.array.shape[0] for u in units]
    x = torch.cat([torch.from_numpy(u.volume.array.astype(np.float32)).unsqueeze(1) for u in units])
    space = UnitSpace.per_sample(spaces, counts)
    y = None if labels is None else torch.tensor([int(c) for c, n in zip(labels, counts) for _ in range(n)])
    fit_slices(protector, x, y, space, key=key, release_name=release_name, device=dev)  # the pipeline's fit
    return protector


def protect_volume(data: np.ndarray | Volume, protector: Protector, *, key: str, label: int | None = None,
                   thresholds: FidelityThresholds | None = None, device: str = "auto",
                   unit: float | None = None) -> ProtectResult:
    """Protect one volume with a fitted protector and check its fidelity.

    Args:
        data: ``(z, y, x)`` / ``(y, x)`` array (integer or float) or a :class:`~medue.Volume`.
        protector: From :func:`fit` (or a release's ``private/protector.pt``).
        key: The site's secret; the noise is deterministic for it and the volume's content.
        label: The volume's class (class-wise methods apply that class's pattern).
        thresholds: Fidelity policy (default: :class:`~medue.fidelity.checks.FidelityThresholds` defaults).
        unit: Float input only: the size of one budget unit (see the module docstring).

    Returns:
        A :class:`ProtectResult`; ``result.passed`` says whether the fidelity policy was met. Nothing is written.
    """
    units = _as_units(data, unit)
    vol = units.volume
    dev = resolve_device(device)
    model = getattr(protector, "model", None)
    if model is not None:
        model.to(dev)
    protected = protector.protect(vol, label=label, seed=derive_seed(key, "volume", vol.fingerprint), device=dev)
    t = thresholds or FidelityThresholds()
    if units.float_input is None:
        fid = check_fidelity(vol.array, protected.array, t, rescale_slope=vol.rescale[0],
                             valid_range=vol.valid_range, device=dev)
        delta = protected.array.astype(np.int64) - vol.array.astype(np.int64)
        return ProtectResult(protected.array, delta, fid, protected, 1.0, protector.unchanged_label(label))
    k = protected.array.astype(np.int64) - vol.array.astype(np.int64)
    original = units.float_input
    out = np.clip(original + k * units.unit, original.min(), original.max()).astype(original.dtype)
    # the policy is in units (max |delta| in units, PSNR/SSIM over the span in units), so check in unit space
    fid = check_fidelity(vol.array, protected.array, t, valid_range=vol.valid_range, device=dev)
    return ProtectResult(out, out - original, fid, None, units.unit, protector.unchanged_label(label))


def protect_folder(input: str | Path, output: str | Path, *, key: str | None = None,
                   key_file: str | Path | None = None, method: str = "lines", params: Mapping[str, Any] | None = None,
                   labels: Mapping[str, Any] | None = None, fidelity: Mapping[str, Any] | None = None,
                   resume: bool = False, progress: Callable[[str], None] | None = None,
                   **config: Any) -> dict[str, Any]:
    """Run the release job (what ``medue run`` runs) on ``input`` into ``output``.

    The key comes from ``key`` (put into the ``MEDUE_KEY`` environment of this process only for the run) or
    ``key_file``. ``labels``, ``fidelity`` and any other keyword are the pipeline config's sections, validated with
    every problem listed at once.

    Returns:
        ``{"exit_code": int, "counts": {...}, "items": [marker, ...]}``: one record per input item (status,
        reason, fidelity, outputs), as the markers on disk hold them.
    """
    import os

    from medue.pipeline.config import parse_config
    from medue.pipeline.runner import run_pipeline

    data: dict[str, Any] = {"name": config.pop("name", Path(output).name or "release"), "input": str(input),
                            "output": str(output), "protect": {"method": method, "params": dict(params or {})},
                            **config}
    if labels is not None:
        data["labels"] = dict(labels)
    if fidelity is not None:
        data["fidelity"] = dict(fidelity)
    env_name = "MEDUE_API_KEY"
    data["key"] = {"env": env_name, **({"file": str(key_file)} if key_file else {})}
    saved = os.environ.get(env_name)
    try:
        if key is not None:
            os.environ[env_name] = key
        summary = run_pipeline(parse_config(data), resume=resume, progress=progress)
    finally:
        if saved is None:
            os.environ.pop(env_name, None)
        else:
            os.environ[env_name] = saved
    return {"exit_code": summary.exit_code, "counts": dict(summary.counts), "items": [m.to_dict() for m in summary.markers]}


__all__ = ["ProtectResult", "fit", "protect_folder", "protect_volume"]
