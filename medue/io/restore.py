"""Restoring the original stored values of a protected item from its private delta (an authorised partner's step).

``restore_original`` (:mod:`medue.io.delta`) undoes the perturbation of an array and checks both fingerprints, so a
delta applied to the wrong item, or to an item read in another slice order, is refused rather than half-applied.
Here the same for whole files: a protected NIfTI, MetaImage or NRRD file, or a protected DICOM series (the files
``medue run`` wrote into one folder of ``release/``).

A restored DICOM instance is a copy of the protected one with the original pixel values, new SOP Instance and
Series UIDs (it is neither the protected instance nor, header-wise, the source) and ``RESTORED`` in front of the
series description; it is written uncompressed, Explicit VR Little Endian, as the protected one was.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from medue.errors import ExportError
from medue.io.atomic import atomic_folder
from medue.io.delta import delta_float_unit, restore_original


def restore_nifti(protected: str | Path, delta: str | Path, out: str | Path, *, key: str | None = None) -> int:
    """Write the original of a protected NIfTI file to ``out``; returns how many voxels changed back. ``key``: the
    site's key, to authenticate the delta (:func:`~medue.io.delta.restore_original`)."""
    from medue.io.nifti import read_nifti, write_nifti

    vol = read_nifti(protected, float_unit=delta_float_unit(delta))
    original = restore_original(vol.array, delta, key=key)
    write_nifti(vol.with_array(original, vol.history[-1]), out)
    return int(np.count_nonzero(original != vol.array))


def restore_itk(protected: str | Path, delta: str | Path, out: str | Path, *, key: str | None = None) -> int:
    """Write the original of a protected MetaImage or NRRD file to ``out`` (the protected file's geometry and
    metadata, the original stored values); returns how many voxels changed back."""
    from medue.io.itk import read_itk, write_itk

    vol = read_itk(protected, float_unit=delta_float_unit(delta))
    original = restore_original(vol.array, delta, key=key)
    write_itk(vol.with_array(original, vol.history[-1]), out)
    return int(np.count_nonzero(original != vol.array))


def restore_dicom_series(protected: str | Path, delta: str | Path, out_dir: str | Path, *,
                         key: str | None = None) -> tuple[list[Path], int]:
    """Write the original pixel values of a protected DICOM series (a folder, or one file of a single-file series)
    into ``out_dir`` (created whole, atomically); returns the files written and how many voxels changed back.

    Raises:
        ExportError: the delta does not belong to this series (fingerprint), or a written file does not read back
            with the restored values.
    """
    from medue.io.dicom import read_dicom_series

    protected = Path(protected)
    files = sorted(p for p in protected.iterdir() if p.is_file()) if protected.is_dir() else [protected]
    vol = read_dicom_series(files, deidentification="ignore")  # medue's own output: nothing to de-identify
    original = restore_original(vol.array, delta, key=key)
    ordered = [Path(p) for p in vol.header["dicom_files"]]
    multiframe = bool(vol.header.get("multiframe"))
    series = generate_uid()
    out_dir = Path(out_dir)
    written: list[Path] = []
    with atomic_folder(out_dir) as tmp:
        for i, path in enumerate(ordered):
            ds = pydicom.dcmread(path)
            pixels = original if multiframe else original[i]
            data = np.ascontiguousarray(pixels, dtype=original.dtype.newbyteorder("<")).tobytes()
            ds.PixelData = data
            ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SeriesInstanceUID = series
            ds.SeriesDescription = ("RESTORED " + str(ds.get("SeriesDescription", ""))).strip()[:64]
            ds.save_as(tmp / path.name, enforce_file_format=True)
            back = pydicom.dcmread(tmp / path.name).PixelData
            if back[:len(data)] != data:
                raise ExportError(f"{path.name}: the restored file does not read back with the restored values")
            written.append(out_dir / path.name)
    return written, int(np.count_nonzero(original != vol.array))
