"""NIfTI <-> Volume. The only place RAS (NIfTI) is converted to LPS (medue, DICOM).

Export never goes through ``nibabel.save`` of a new image: that path recomputes ``scl_slope``/``scl_inter``
and can rescale every voxel. Instead the source header bytes (and extensions) are kept verbatim and only the
voxel block is replaced, in the header's own dtype and byte order, so only perturbed voxels change.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medue.errors import ExportError, IngestError
from medue.io.paths import relative_label
from medue.io.units import float_header, float_to_units, units_to_float_exact
from medue.io.atomic import atomic_file
from medue.provenance import StepRecord, sha256_file
from medue.volume import Geometry, SourceRef, Volume

#: RAS <-> LPS: flip the first two world axes.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def read_nifti(path: str | Path, *, root: Path | None = None, float_unit: float | None = None) -> Volume:
    """Read a single-file NIfTI-1/2 image.

    The array is the raw stored data (``dataobj.get_unscaled()``) transposed to ``(z, y, x)``; ``scl_slope`` and
    ``scl_inter`` go to the header as rescale slope/intercept.

    Floating-point voxels are read with ``float_unit`` (``protect.unit``) as whole multiples of it: the array holds
    ``value / float_unit`` as int32, the header ``float_unit`` and a rescale slope of ``float_unit * scl_slope``, and
    :func:`write_nifti` writes ``units * float_unit`` back in the file's own float type. Only an image whose every
    voxel is such a multiple, bit for bit, is read (then the release restores it bit-exactly); nothing is rounded.

    Raises:
        IngestError: ``truncated`` (unreadable), ``nan_values``, ``unsupported`` (float data without
            ``float_unit`` or not on its steps, 4D with more than one volume, 1D).
    """
    path = Path(path)
    label = relative_label(path, root)
    try:
        img = nib.load(str(path))
        raw = np.asanyarray(img.dataobj.get_unscaled())
    except Exception as exc:  # nibabel raises many types for truncated / corrupt files
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        short = isinstance(exc, EOFError) or "bytes" in text or "truncated" in text.lower()
        raise IngestError(f"{label}: not readable as NIfTI ({text}); "
                          + ("the file is shorter than its header declares" if short else
                             "the header is not valid NIfTI-1/2; re-export the image from its source"),
                          source=label, reason="truncated" if short else "bad_header") from exc
    single_file = not str(path).lower().endswith((".hdr", ".img", ".hdr.gz", ".img.gz"))
    header_size = int(img.header.sizeof_hdr) if "sizeof_hdr" in img.header else 348
    offset = int(getattr(img.dataobj, "offset", header_size + 4))  # the proxy's offset (vox_offset 0 may mean 352)
    if single_file and offset < header_size:
        raise IngestError(f"{label}: data offset {offset} lies inside the {header_size}-byte "
                          "header; expected at least 352 for a single-file NIfTI; fix vox_offset or re-export",
                          source=label, reason="bad_header")
    float_dtype = None
    if np.issubdtype(raw.dtype, np.floating):
        if not np.isfinite(raw).all():
            raise IngestError(f"{label}: {int((~np.isfinite(raw)).sum())} NaN or infinite voxels; fix or mask them "
                              "before release", source=label, reason="nan_values")
        if float_unit is None:
            raise IngestError(
                f"{label}: stored dtype {raw.dtype} is floating point; medue perturbs whole units, so set "
                "protect.unit to the step of the image's values (1 for CT in float HU) or convert the image to an "
                "integer dtype with scl_slope/scl_inter", source=label, reason="unsupported")
        float_dtype = raw.dtype
        raw = float_to_units(raw, float_unit, label)
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if raw.ndim == 2:
        raw = raw[..., None]
    if raw.ndim != 3:
        raise IngestError(f"{label}: shape {raw.shape}; expected a 3D volume (split 4D series first)",
                          source=label, reason="unsupported")
    hdr = img.header
    # nibabel moves scl_slope/scl_inter into the array proxy on load (the header then reads nan)
    slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
    array = np.ascontiguousarray(raw.transpose(2, 1, 0))
    affine = RAS_TO_LPS @ img.affine
    info = np.iinfo(array.dtype)
    if float_dtype is not None:
        slope = slope * float(float_unit)
    header: dict[str, Any] = {
        "rescale_slope": slope,
        "rescale_intercept": inter,
        "valid_range": (int(info.min), int(info.max)),
        "nifti_file": str(path),
        "nifti_dtype": str(hdr.get_data_dtype()),
        "qform_code": int(hdr["qform_code"]),
        "sform_code": int(hdr["sform_code"]),
    }
    if float_dtype is not None:  # the unit, the float type, and the whole units that type holds exactly
        header.update(float_header(float_dtype, float_unit))
    source = SourceRef(paths=(label,), sha256=(sha256_file(path),), format="nifti")
    vol = Volume(array=array, geometry=Geometry(affine=affine), modality="OT", source=source, header=header)
    return vol.with_step(StepRecord(name="read:nifti", params={"nibabel": nib.__version__},
                                    output_fingerprint=vol.fingerprint))


def write_nifti(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` as a copy of its source NIfTI file with only the voxel block replaced, then verify."""
    src_path = Path(volume.header.get("nifti_file", ""))
    if not src_path.is_file():
        raise ExportError(f"source NIfTI {src_path.name or '(none)'} is not available to copy the header from")
    src = nib.load(str(src_path))
    hdr = src.header
    offset = int(src.dataobj.offset)  # vox_offset may read 0 in older files; the proxy knows the real one
    if offset < hdr.sizeof_hdr:
        raise ExportError(f"source NIfTI data offset {offset} lies inside its {hdr.sizeof_hdr}-byte header; "
                          "the file is malformed (fix vox_offset) and cannot be rewritten safely")
    opener = gzip.open if src_path.name.lower().endswith(".gz") else open
    with opener(src_path, "rb") as fh:
        head = fh.read(offset)
    if len(head) != offset:
        raise ExportError(f"source NIfTI header is shorter than vox_offset {offset}")
    dtype = hdr.get_data_dtype()
    data = volume.array.transpose(2, 1, 0).reshape(src.dataobj.shape)
    unit = volume.header.get("float_unit")
    if unit is not None and dtype.kind == "f":
        data = units_to_float_exact(data, unit, dtype)
    if data.dtype.kind != dtype.kind or data.dtype.itemsize != dtype.itemsize:
        raise ExportError(f"protected dtype {data.dtype} does not match the source's stored dtype {dtype}")
    body = np.asarray(data, dtype=dtype).tobytes(order="F")
    path = Path(path)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as raw:
            if path.name.lower().endswith(".gz"):
                # no file name and a fixed mtime in the gzip header: identical pixels give identical bytes
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as fh:
                    fh.write(head)
                    fh.write(body)
            else:
                raw.write(head)
                raw.write(body)
        verify_nifti(tmp, src, data, head)
    return path


def verify_nifti(path: Path, src: Any, expected: np.ndarray, head: bytes) -> None:
    """Re-read ``path`` and check stored voxels, the verbatim header bytes, dtype, scaling and transforms."""
    out = nib.load(str(path))
    problems = []
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        if fh.read(len(head)) != head:
            problems.append("header bytes differ from the source header")
    if (out.dataobj.slope, out.dataobj.inter) != (src.dataobj.slope, src.dataobj.inter):
        problems.append(f"scaling {(out.dataobj.slope, out.dataobj.inter)} != source "
                        f"{(src.dataobj.slope, src.dataobj.inter)}")
    if not np.array_equal(np.asanyarray(out.dataobj.get_unscaled()), expected):
        problems.append("stored voxels differ from the protected array")
    a, b = out.header, src.header
    if a.get_data_dtype() != b.get_data_dtype():
        problems.append(f"dtype {a.get_data_dtype()} != source {b.get_data_dtype()}")
    for field in ("scl_slope", "scl_inter", "qform_code", "sform_code", "pixdim", "srow_x", "srow_y", "srow_z",
                  "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"):
        if not np.array_equal(np.asarray(a[field]), np.asarray(b[field]), equal_nan=True):
            problems.append(f"{field} changed")
    if problems:
        raise ExportError("NIfTI verification failed: " + "; ".join(problems))

