"""Reading DICOM series into a Volume (the derived series medue writes: :mod:`medue.io.dicom_derive`).

Reading keeps pixels in stored units (``pixel_array`` without the modality LUT) and records rescale
slope/intercept; decoding is pydicom's (and its pylibjpeg/openjpeg plugins'). The headers of the series read last
are kept (:func:`take_headers`) so that writing its derived copy needs no second read of the source files.
"""
from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medue.errors import DeidentificationError, IngestError
from medue.io.paths import relative_label
from medue.provenance import StepRecord
from medue.volume import Geometry, SourceRef, Volume

DEID_POLICIES = ("refuse", "warn", "ignore")

#: SOP classes medue can write a derived copy of (single-frame image storage and their enhanced kin).
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.20": "NM Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.2": "X-Ray Radiofluoroscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
}
#: Storage classes that carry pixels but are not images medue may perturb, with the reason said to the user.
NON_IMAGE_PIXEL_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose holds a dose grid, not an image: perturbing it would change doses",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation holds labels, not intensities: perturbing it would change them",
    "1.2.840.10008.5.1.4.1.1.481.1": "RT Image is a treatment-verification image tied to a plan; not supported",
}


@dataclass(frozen=True)
class DicomHeaderSummary:
    """What discovery needs from one file, read without pixel data."""

    path: Path
    series_uid: str
    rows: int
    columns: int
    orientation: tuple[float, ...]


def read_header(path: Path) -> DicomHeaderSummary | None:
    """Parse ``path`` as DICOM without pixels; ``None`` if it is not DICOM at all."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # not DICOM (or unreadable header): discovery quarantines it with its reason
        return None
    is_dicom_file = bool(getattr(ds, "preamble", None)) or "MediaStorageSOPClassUID" in getattr(ds, "file_meta", {})
    if "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds and not is_dicom_file:
        return None
    # grouping only: malformed values still group (the reader then quarantines the series with its reason)
    try:
        iop: tuple[Any, ...] = tuple(round(float(v), 4) for v in ds.get("ImageOrientationPatient", []) or ())
    except (TypeError, ValueError):
        iop = ("malformed",)

    def _int(keyword: str) -> int:
        try:
            return int(ds.get(keyword, 0) or 0)
        except (TypeError, ValueError):
            return -1

    series = str(ds.get("SeriesInstanceUID", "") or "") or f"(no series UID) {path}"  # never merge such files
    return DicomHeaderSummary(path=path, series_uid=series, rows=_int("Rows"),
                              columns=_int("Columns"), orientation=iop)


def group_series(headers: Sequence[DicomHeaderSummary]) -> list[list[Path]]:
    """Group files by SeriesInstanceUID, splitting a series whose files disagree on size or orientation."""
    groups: dict[tuple[Any, ...], list[Path]] = {}
    for h in headers:
        groups.setdefault((h.series_uid, h.rows, h.columns, h.orientation), []).append(h.path)
    return [sorted(paths) for _, paths in sorted(groups.items(), key=lambda kv: str(kv[0]))]


def check_deidentified(ds: Dataset, *, policy: str, source: str, retain: tuple[str, ...] = ()) -> str | None:
    """Apply the de-identification policy; returns a warning text for ``warn`` or ``None``.

    An instance is de-identified when it declares it (PatientIdentityRemoved YES, or a DeidentificationMethod) *and*
    carries none of the attributes the PS3.15 Basic Profile removes from it (:func:`medue.io.basic_profile.violations`;
    ``retain``: the Retain Institution / Device Identity options the site applies): the flag alone is not trusted.
    Under ``warn`` such an instance is released with its header as it is, identifying attributes included, and the
    warning names them.
    """
    if policy == "ignore":
        return None
    removed = str(ds.get("PatientIdentityRemoved", "")).strip().upper()
    method = str(ds.get("DeidentificationMethod", "") or "").strip()
    problems = []
    if removed != "YES" and not (method and removed != "NO"):
        problems.append(f"input does not declare de-identification (PatientIdentityRemoved is "
                        f"{removed or 'absent'}, DeidentificationMethod is {'empty' if not method else 'set'}); "
                        "run the site de-identifier first (it sets PatientIdentityRemoved=YES and names its method)")
    from medue.io.basic_profile import violations

    left = violations(ds, retain)
    if left:
        problems.append(f"identifying attributes still carry values ({', '.join(left[:8])}"
                        f"{', ...' if len(left) > 8 else ''}) although the instance declares de-identification "
                        "(PS3.15 Basic Profile); run the site de-identifier over it again")
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        problems.append("BurnedInAnnotation is YES: text burned into the pixels may identify the patient; remove it "
                        "(or crop) before release")
    if not problems:
        return None
    msg = "; ".join(problems) + ", or set deidentification: warn"
    if policy == "refuse":
        raise DeidentificationError(msg, source=source)
    return msg


#: Largest decoded pixel block medue accepts per file, checked before decoding (declared sizes can be absurd).
MAX_DECODED_BYTES = 8 * 1024**3

#: Header-only datasets of the series read last, so that writing a derived copy needs no second read of the
#: source files: keyed by the source paths and the SHA-256 each had when it was read. A worker reads, protects
#: and writes one volume at a time, so a few series are enough; a miss (another process read it) reads the
#: headers again.
_HEADERS: OrderedDict[tuple[tuple[str, ...], tuple[str, ...]], list[Dataset]] = OrderedDict()
_HEADERS_KEPT = 4


def _keep_headers(key: tuple[tuple[str, ...], tuple[str, ...]], datasets: list[Dataset]) -> None:
    for ds in datasets:  # what dcmread(stop_before_pixels=True) would have read: nothing from PixelData on
        for tag in [t for t in ds.keys() if t >= 0x7FE00010]:
            del ds[tag]
    _HEADERS[key] = datasets
    _HEADERS.move_to_end(key)
    while len(_HEADERS) > _HEADERS_KEPT:
        _HEADERS.popitem(last=False)


def take_headers(files: Sequence[str | Path], sha256: Sequence[str]) -> list[Dataset] | None:
    """The header-only datasets kept when ``files`` were read with these SHA-256s (removed from the cache), or
    ``None`` when another process read them or they were read with other content."""
    return _HEADERS.pop((tuple(str(f) for f in files), tuple(sha256)), None)


def check_declared_size(n_bytes: int, source: str) -> None:
    """Refuse an image whose declared size would decode to more than :data:`MAX_DECODED_BYTES`."""
    if n_bytes > MAX_DECODED_BYTES:
        raise IngestError(f"declared image size decodes to {n_bytes / 1024**3:.1f} GiB, more than the "
                          f"{MAX_DECODED_BYTES / 1024**3:.0f} GiB medue reads per file; the header is probably wrong "
                          "(check Rows, Columns, NumberOfFrames or the image dimensions)", source=source,
                          reason="too_large")


def _decode(ds: Dataset, source: str) -> np.ndarray:
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.Rows) * int(ds.Columns) * frames * int(ds.get("SamplesPerPixel", 1))
    check_declared_size(samples * max(int(ds.BitsAllocated), 8) // 8, source)
    if ts is not None and not ts.is_compressed:
        expected = samples * int(ds.BitsAllocated) // 8
        held = len(ds.get("PixelData") or b"")
        if held < expected:
            raise IngestError(f"pixel data holds {held} bytes, {expected} expected: the file is truncated",
                              source=source, reason="truncated")
        if held > expected + (expected % 2) + 1:  # one padding byte is allowed
            raise IngestError(f"pixel data holds {held} bytes, {expected} expected for {int(ds.Rows)} x "
                              f"{int(ds.Columns)} x {frames} frame(s): the header "
                              "does not describe the pixels; re-export the file", source=source,
                              reason="bad_pixel_data")
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises several types; each becomes a reasoned quarantine
        text = str(exc)
        if ts is not None and ts.is_compressed and ("handler" in text.lower() or "plugin" in text.lower()):
            raise IngestError(
                f"cannot decode compressed transfer syntax {ts.name}: no decoder available ({text.splitlines()[0]}); "
                "install pylibjpeg with pylibjpeg-openjpeg (JPEG 2000) or pylibjpeg-libjpeg (JPEG, JPEG-LS)",
                source=source,
                reason="missing_decoder",
            ) from exc
        raise IngestError(f"pixel data could not be decoded: {text.splitlines()[0]}", source=source,
                          reason="bad_pixel_data") from exc


def _valid_range(ds: Dataset) -> tuple[int, int]:
    bits = int(ds.BitsStored)
    if int(ds.PixelRepresentation) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _affine(first: Dataset, positions: np.ndarray, n: int) -> tuple[np.ndarray, list[str]]:
    warnings: list[str] = []
    affine = np.eye(4)
    iop = first.get("ImageOrientationPatient") or None
    spacing = first.get("PixelSpacing") or None
    if iop is None or spacing is None or len(positions) == 0:
        warnings.append("no ImageOrientationPatient/PixelSpacing/ImagePositionPatient: identity geometry used")
        return affine, warnings
    row_dir = np.asarray(iop[:3], dtype=float)
    col_dir = np.asarray(iop[3:], dtype=float)
    affine[:3, 0] = row_dir * float(spacing[1])
    affine[:3, 1] = col_dir * float(spacing[0])
    affine[:3, 3] = positions[0]
    if n > 1:
        steps = np.diff(positions, axis=0)
        step = (positions[-1] - positions[0]) / (n - 1)
        affine[:3, 2] = step
        lengths = np.linalg.norm(steps, axis=1)
        if lengths.max() - lengths.min() > 0.01 * max(float(lengths.mean()), 1e-6):
            warnings.append(
                f"non-uniform slice spacing ({lengths.min():.3f}-{lengths.max():.3f} mm): the affine uses the mean; "
                "DICOM export keeps each slice's own position"
            )
    else:
        normal = np.cross(row_dir, col_dir)
        affine[:3, 2] = normal * float(first.get("SliceThickness", 1.0) or 1.0)
    return affine, warnings


def _as_numbers(value: Any) -> list[float] | None:
    """The numbers of a (multi-)valued DICOM element, or ``None`` when any value is not a number."""
    values = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def pixel_module_problems(ds: Dataset) -> list[str]:
    """Every reason the Image Pixel module and plane geometry of ``ds`` cannot be interpreted, all at once.

    Required: Rows, Columns, BitsAllocated (8, 16 or 32), BitsStored (1..BitsAllocated), HighBit (BitsStored - 1),
    PixelRepresentation (0 or 1), SamplesPerPixel and PhotometricInterpretation, as whole numbers / text. Where
    present: a finite, non-zero RescaleSlope and finite RescaleIntercept; three finite ImagePositionPatient values;
    two finite positive PixelSpacing values; ImageOrientationPatient as two orthogonal unit vectors.
    """
    problems = []
    ints: dict[str, int] = {}
    for kw in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel"):
        value = ds.get(kw)
        if value is None or value == "":
            problems.append(f"{kw} is {'missing' if kw not in ds else 'empty'}")
        elif not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{kw} is {str(value)[:20]!r}, expected a whole number")
        else:
            ints[kw] = int(value)
    if not str(ds.get("PhotometricInterpretation", "") or "").strip():
        problems.append("PhotometricInterpretation is missing or empty")
    if "Rows" in ints and not 1 <= ints["Rows"] <= 65535 or "Columns" in ints and not 1 <= ints["Columns"] <= 65535:
        problems.append(f"image size {ints.get('Rows')} x {ints.get('Columns')}, expected 1..65535 each")
    allocated, stored = ints.get("BitsAllocated"), ints.get("BitsStored")
    if allocated is not None and allocated not in (8, 16, 32):
        problems.append(f"BitsAllocated {allocated}, expected 8, 16 or 32")
    if stored is not None and allocated is not None and not 1 <= stored <= allocated:
        problems.append(f"BitsStored {stored}, expected 1..BitsAllocated ({allocated})")
    if stored is not None and ints.get("HighBit") is not None and ints["HighBit"] != stored - 1:
        problems.append(f"HighBit {ints['HighBit']}, expected BitsStored - 1 = {stored - 1}")
    if ints.get("PixelRepresentation") not in (None, 0, 1):
        problems.append(f"PixelRepresentation {ints['PixelRepresentation']}, expected 0 (unsigned) or 1 (signed)")
    for kw, count, positive in (("RescaleSlope", 1, False), ("RescaleIntercept", 1, False),
                                ("ImagePositionPatient", 3, False), ("PixelSpacing", 2, True),
                                ("ImageOrientationPatient", 6, False)):
        if kw not in ds or ds[kw].value in (None, ""):
            continue
        nums = _as_numbers(ds[kw].value)
        if nums is None or len(nums) != count or not all(np.isfinite(nums)) or (positive and min(nums) <= 0):
            problems.append(f"{kw} is {str(ds[kw].value)[:40]!r}, expected {count} finite"
                            f"{' positive' if positive else ''} number(s)")
        elif kw == "RescaleSlope" and nums[0] == 0:
            problems.append("RescaleSlope is 0: every pixel would have the same value")
        elif kw == "ImageOrientationPatient":
            row, col = np.array(nums[:3]), np.array(nums[3:])
            if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
                problems.append(f"ImageOrientationPatient {nums} is not two orthogonal unit vectors")
    return problems


def read_dicom_series(paths: Sequence[str | Path], *, deidentification: str = "refuse", root: Path | None = None,
                      retain: tuple[str, ...] = ()) -> Volume:
    """Read one series (single-frame files or one multi-frame file) into a :class:`Volume`.

    Args:
        paths: Files of one series, any order.
        deidentification: ``"refuse"`` (raise on identified input), ``"warn"`` or ``"ignore"``.
        root: Folder the recorded paths are made relative to.

    Raises:
        IngestError: with a ``reason`` code: ``truncated``, ``no_pixel_data``, ``not_an_image``,
            ``missing_decoder``, ``inconsistent_series``, ``unsupported``…
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise IngestError("empty series: no files given", source="", reason="empty")
    label = relative_label(paths[0], root)
    datasets: list[Dataset] = []
    warnings: list[str] = []
    digests: dict[Path, str] = {}
    for p in paths:
        try:
            raw = p.read_bytes()  # read once: hashed and parsed from the same bytes
            digests[p] = hashlib.sha256(raw).hexdigest()
            ds = pydicom.dcmread(io.BytesIO(raw))
        except Exception as exc:  # truncated or corrupt files
            raise IngestError(f"{relative_label(p, root)}: not readable as DICOM ({exc})", source=label, reason="truncated") from exc
        sop = str(ds.get("SOPClassUID", ""))
        if "PixelData" not in ds:
            reason = "not_an_image" if sop and sop not in IMAGE_SOP_CLASSES else "no_pixel_data"
            raise IngestError(
                f"{relative_label(p, root)}: no PixelData (SOP class {getattr(ds.get('SOPClassUID'), 'name', sop) or 'unknown'}); "
                "medue protects image series only",
                source=label,
                reason=reason,
            )
        if sop and sop not in IMAGE_SOP_CLASSES:
            why = NON_IMAGE_PIXEL_CLASSES.get(sop, "not an image storage class medue can derive")
            raise IngestError(
                f"{relative_label(p, root)}: SOP class {ds.SOPClassUID.name}: {why} "
                f"(supported: {', '.join(sorted(set(IMAGE_SOP_CLASSES.values())))})",
                source=label,
                reason="not_an_image",
            )
        missing = [kw for kw in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
                   if not str(ds.get(kw, "") or "").strip()]
        if missing:
            raise IngestError(f"{relative_label(p, root)}: {', '.join(missing)} missing or empty; a derived copy "
                              "must reference its source instance, series and study; re-export the file with its "
                              "UIDs", source=label, reason="bad_header")
        problems = pixel_module_problems(ds)
        if problems:
            raise IngestError(f"{relative_label(p, root)}: image pixel module or geometry not usable: "
                              f"{'; '.join(problems)}; re-export the series from its source", source=label,
                              reason="bad_header")
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise IngestError(f"{relative_label(p, root)}: {ds.SamplesPerPixel} samples per pixel; only grayscale is supported",
                              source=label, reason="unsupported")
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise IngestError(f"{relative_label(p, root)}: PhotometricInterpretation {photometric}; medue perturbs "
                              "grayscale intensities only (perturbing palette indices or colour would change the "
                              "rendered image unboundedly); convert to MONOCHROME2 first", source=label,
                              reason="unsupported")
        w = check_deidentified(ds, policy=deidentification, source=label, retain=retain)
        if w and w not in warnings:
            warnings.append(w)
        datasets.append(ds)

    layout = {(int(d.Rows), int(d.Columns), int(d.BitsAllocated), int(d.BitsStored), int(d.PixelRepresentation),
               float(d.get("RescaleSlope", 1) or 1), float(d.get("RescaleIntercept", 0) or 0)) for d in datasets}
    if len(layout) > 1:
        raise IngestError(
            f"series mixes {len(layout)} pixel layouts (rows, columns, bits, representation, rescale): {sorted(layout)}; "
            "split the series or re-export it consistently",
            source=label,
            reason="inconsistent_series",
        )

    multiframe = len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1
    if multiframe:
        ds = datasets[0]
        array = _decode(ds, label)
        positions = _frame_positions(ds)
        ordered = [ds]
        order_paths = [paths[0]]
        if positions is None:
            warnings.append("multi-frame without per-frame positions: identity geometry used")
            positions = np.zeros((0, 3))
    else:
        if len(datasets) > 1:
            positions_list = [d.get("ImagePositionPatient") or None for d in datasets]
            located = all(p is not None for p in positions_list) and bool(datasets[0].get("ImageOrientationPatient"))
            if located:
                iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
                normal = np.cross(iop[:3], iop[3:])
                keys = [float(np.dot(normal, np.asarray(p, dtype=float))) for p in positions_list]
                if len(set(round(k, 4) for k in keys)) != len(keys):
                    raise IngestError("two or more slices share one position; the series holds duplicates or several "
                                      "acquisitions", source=label, reason="inconsistent_series")
            else:
                keys = [float(d.get("InstanceNumber", i)) for i, d in enumerate(datasets)]
                warnings.append("slices without ImagePositionPatient/ImageOrientationPatient: sorted by "
                                "InstanceNumber, identity geometry used")
            order = np.argsort(keys, kind="stable")
        else:
            order = np.array([0])
            located = bool(datasets[0].get("ImagePositionPatient"))
        ordered = [datasets[i] for i in order]
        order_paths = [paths[i] for i in order]
        slices = [_decode(d, label) for d in ordered]
        array = np.stack(slices)
        positions = (np.asarray([[float(v) for v in d.ImagePositionPatient] for d in ordered]) if located
                     else np.zeros((0, 3)))
    if array.ndim == 2:
        array = array[None]
    first = ordered[0]
    affine, geo_warnings = _affine(first, positions, array.shape[0])
    warnings += geo_warnings

    header: dict[str, Any] = {
        "rescale_slope": float(first.get("RescaleSlope", 1) or 1),
        "rescale_intercept": float(first.get("RescaleIntercept", 0) or 0),
        "rescale_type": str(first.get("RescaleType", "HU" if first.get("Modality") == "CT" else "US")),
        "valid_range": _valid_range(first),
        "bits_allocated": int(first.BitsAllocated),
        "bits_stored": int(first.BitsStored),
        "pixel_representation": int(first.PixelRepresentation),
        "photometric": str(first.get("PhotometricInterpretation", "MONOCHROME2")),
        "sop_class_uid": str(first.get("SOPClassUID", "")),
        "transfer_syntax": str(first.file_meta.get("TransferSyntaxUID", "")),
        "multiframe": multiframe,
        "dicom_files": [str(p) for p in order_paths],
    }
    if "WindowCenter" in first and "WindowWidth" in first:
        header["window"] = (_first_float(first.WindowCenter), _first_float(first.WindowWidth))
    hashes = tuple(digests[p] for p in order_paths)
    _keep_headers((tuple(str(p) for p in order_paths), hashes), ordered)
    rel = tuple(relative_label(p, root) for p in order_paths)
    source = SourceRef(paths=rel, sha256=hashes, format="dicom", series_uid=str(first.get("SeriesInstanceUID", "")))
    vol = Volume(
        array=array,
        geometry=Geometry(affine=affine, frame_of_reference_uid=str(first.get("FrameOfReferenceUID", ""))),
        modality=str(first.get("Modality", "OT")),
        source=source,
        header=header,
    )
    return vol.with_step(StepRecord(name="read:dicom", params={"files": len(order_paths), "multiframe": multiframe},
                                    output_fingerprint=vol.fingerprint, warnings=tuple(warnings)))


def _first_float(value: Any) -> float:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0]
    return float(value)


def _frame_positions(ds: Dataset) -> np.ndarray | None:
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    if not frames:
        return None
    try:
        return np.asarray([[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient] for f in frames])
    except (AttributeError, IndexError, KeyError):
        return None
