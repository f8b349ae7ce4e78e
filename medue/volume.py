"""The one record that flows through every stage: a volume in stored integer units plus its geometry.

Pure data: no file I/O and no torch here.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from medue.errors import InvalidVolumeError
from medue.provenance import StepRecord, fingerprint_array

#: Array axis order of every Volume: slices, rows, columns.
AXES = ("z", "y", "x")


@dataclass(frozen=True)
class Geometry:
    """Where the voxels are in patient space.

    Attributes:
        affine: 4x4 matrix mapping voxel indices ``(x, y, z, 1)`` (column, row, slice) to LPS millimetres
            (DICOM patient coordinates). NIfTI's RAS is converted in :mod:`medue.io.nifti` only.
        frame_of_reference_uid: DICOM FrameOfReferenceUID when known.
    """

    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    frame_of_reference_uid: str = ""

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along (x, y, z) in millimetres."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


@dataclass(frozen=True)
class SourceRef:
    """Where a volume came from, without PHI.

    Attributes:
        paths: Input files (relative to the input root where possible).
        sha256: SHA-256 of each input file, same order as ``paths``.
        format: Reader key that actually ran (``"dicom"``, ``"nifti"``, ``"itk"``).
        series_uid: SeriesInstanceUID for DICOM, else ``""``.
        volume_id: Stable, PHI-free id used for output names and markers (hash of the input hashes).
    """

    paths: tuple[str, ...]
    sha256: tuple[str, ...]
    format: str
    series_uid: str = ""
    volume_id: str = ""


@dataclass(frozen=True)
class Volume:
    """A 3D image in *stored* integer units (the values written in the file, before rescale).

    Attributes:
        array: ``(z, y, x)`` integer array exactly as stored (int16, uint16, uint8…). Physical values are
            ``array * rescale_slope + rescale_intercept`` (HU for CT).
        geometry: Affine and frame of reference.
        modality: DICOM modality (``"CT"``, ``"MR"``…) or ``"OT"`` when unknown.
        source: Provenance of the input.
        header: Minimal, PHI-free header needed by export and reports (``rescale_slope``,
            ``rescale_intercept``, ``valid_range``…). Format-specific payloads live under their own keys.
        history: Steps applied so far, oldest first.
    """

    array: np.ndarray
    geometry: Geometry
    modality: str
    source: SourceRef
    header: Mapping[str, Any] = field(default_factory=dict)
    history: tuple[StepRecord, ...] = ()

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise InvalidVolumeError(f"Volume.array must be 3D (z, y, x), got shape {self.array.shape}")
        if not np.issubdtype(self.array.dtype, np.integer):
            raise InvalidVolumeError(
                f"Volume.array must hold stored integer units, got dtype {self.array.dtype}; "
                "readers keep the file's integer dtype and record rescale slope/intercept in the header"
            )

    @property
    def rescale(self) -> tuple[float, float]:
        """``(slope, intercept)`` mapping stored units to physical units (HU for CT)."""
        return float(self.header.get("rescale_slope", 1.0)), float(self.header.get("rescale_intercept", 0.0))

    @property
    def valid_range(self) -> tuple[int, int]:
        """Smallest and largest value the stored representation can hold."""
        if "valid_range" in self.header:
            lo, hi = self.header["valid_range"]
            return int(lo), int(hi)
        info = np.iinfo(self.array.dtype)
        return int(info.min), int(info.max)

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the array (computed once per Volume: the array of a Volume is never changed in place)."""
        return fingerprint_array(self.array)

    def with_array(self, array: np.ndarray, step: StepRecord) -> Volume:
        """A copy holding ``array`` (same shape and dtype) with ``step`` appended to the history."""
        if array.shape != self.array.shape:
            raise InvalidVolumeError(f"new array shape {array.shape} != volume shape {self.array.shape}")
        if array.dtype != self.array.dtype:
            raise InvalidVolumeError(f"new array dtype {array.dtype} != volume dtype {self.array.dtype}")
        return dataclasses.replace(self, array=array, history=(*self.history, step))

    def with_step(self, step: StepRecord) -> Volume:
        return dataclasses.replace(self, history=(*self.history, step))
