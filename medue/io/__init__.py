"""Finding inputs, reading them into Volumes and writing protected outputs. Only this package opens image files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medue.errors import ExportError, IngestError
from medue.io import dicom, dicom_derive, itk, nifti
from medue.registry import Registry
from medue.volume import Volume

READERS: Registry[Callable[..., Volume]] = Registry("reader")
READERS.add("dicom", dicom.read_dicom_series)
READERS.add("nifti", nifti.read_nifti)
READERS.add("itk", itk.read_itk)

IGNORED_NAMES = {"DICOMDIR", ".DS_Store", "Thumbs.db"}


@dataclass(frozen=True)
class InputItem:
    """One unit of work: a DICOM series or one image file.

    ``item_id`` is a PHI-free stable id (hash of the format and relative paths) used for output names,
    completion markers and sharding. ``paths`` stay on the site: they may contain PHI.
    """

    kind: str
    paths: tuple[str, ...]
    item_id: str
    problem: str = ""
    #: Class index from the release's labels (:mod:`medue.labels`); ``None`` for an unlabelled release.
    label: int | None = None

    @property
    def is_quarantined(self) -> bool:
        return bool(self.problem)


def _item_id(kind: str, rel_paths: list[str]) -> str:
    # a name that is not valid UTF-8 arrives with surrogate escapes: its raw bytes give a stable id
    return hashlib.sha256(("\n".join([kind, *sorted(rel_paths)])).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def discover_inputs(root: str | Path, *, ignored: list[dict[str, str]] | None = None) -> list[InputItem]:
    """Walk ``root`` and return work items sorted by ``item_id`` (a stable order for ``--shard``).

    DICOM files are grouped into series; files that are neither DICOM, NIfTI nor an ITK format become items
    with ``problem`` set, so they are quarantined with a reason rather than silently skipped.

    Files that are skipped on purpose (hidden files, OS clutter, sidecars) are appended to ``ignored`` as
    ``{"path": relative path, "reason": ...}`` so a run can account for every file under ``root``.

    Raises:
        IngestError: ``root`` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise IngestError(f"input folder {root} does not exist", source=str(root), reason="missing")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    base = root.parent if root.is_file() else root
    items: list[InputItem] = []
    headers = []
    skipped = ignored if ignored is not None else []
    inside = base.resolve()
    for path in files:
        rel = str(path.relative_to(base))
        if not path.resolve().is_relative_to(inside):  # a link, or a file in a linked folder, leading out
            skipped.append({"path": rel, "reason": "symbolic link to a file outside the input folder (not followed)"})
            continue
        if path.name in IGNORED_NAMES or path.name.startswith(".") or any(
                part.startswith(".") for part in Path(rel).parts[:-1]):
            skipped.append({"path": rel, "reason": "hidden or operating-system file"})
            continue
        if nifti.is_nifti(path):
            items.append(InputItem("nifti", (str(path),), _item_id("nifti", [rel])))
        elif itk.is_itk(path):
            items.append(InputItem("itk", (str(path),), _item_id("itk", [rel])))
        elif path.suffix.lower() in (".raw", ".zraw", ".json", ".txt", ".md", ".csv", ".tsv"):
            skipped.append({"path": rel, "reason": f"sidecar or note ({path.suffix.lower()})"})
        else:
            header = dicom.read_header(path)
            if header is None:
                items.append(InputItem("unknown", (str(path),), _item_id("unknown", [rel]),
                                       problem="not DICOM, NIfTI or an ITK image format (unreadable header)"))
            else:
                headers.append(header)
    for group in dicom.group_series(headers):
        rels = [str(p.relative_to(base)) for p in group]
        items.append(InputItem("dicom", tuple(str(p) for p in group), _item_id("dicom", rels)))
    return sorted(items, key=lambda it: it.item_id)


def peek(item: InputItem) -> tuple[str, tuple[int, int]] | None:
    """``(modality, (rows, columns))`` of an item from its header alone (no pixels), or ``None`` when unreadable.

    Formats without a modality (NIfTI, MHA/NRRD) give ``"OT"``, as their readers do.
    """
    try:
        if item.kind == "dicom":
            import pydicom

            ds = pydicom.dcmread(item.paths[0], stop_before_pixels=True,
                                 specific_tags=["Modality", "Rows", "Columns"])
            return str(ds.get("Modality") or "OT"), (int(ds.Rows), int(ds.Columns))
        if item.kind == "nifti":
            import nibabel as nib

            shape = nib.load(item.paths[0]).shape
            return "OT", (int(shape[1]) if len(shape) > 1 else 1, int(shape[0]))
        if item.kind == "itk":
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(item.paths[0])
            reader.ReadImageInformation()
            size = reader.GetSize()
            return "OT", (int(size[1]) if len(size) > 1 else 1, int(size[0]))
    except Exception:  # an unreadable header: the item is quarantined when it is read
        return None
    return None


def read_item(item: InputItem, *, root: str | Path | None = None, deidentification: str = "refuse",
              float_unit: float | None = None, deid_retain: tuple[str, ...] = ()) -> Volume:
    """Read one discovered item with the reader its kind names; the reader key is recorded in the history.

    ``float_unit`` (``protect.unit``): a floating-point NIfTI, MetaImage or NRRD image is read as whole multiples of
    this step (:mod:`medue.io.units`); without it such an image is refused."""
    if item.problem:
        raise IngestError(item.problem, source=item.item_id, reason="unrecognized")
    root_path = Path(root) if root is not None else None
    reader = READERS.get(item.kind)
    if item.kind == "dicom":
        volume = reader(item.paths, deidentification=deidentification, root=root_path, retain=deid_retain)
    else:
        volume = reader(item.paths[0], root=root_path, float_unit=float_unit)
    check_volume(volume, item.item_id)
    return volume


def check_volume(volume: Volume, label: str) -> None:
    """Refuse a volume whose geometry or rescale cannot be interpreted, whatever format it came from.

    Raises:
        IngestError: ``bad_geometry`` (affine not finite or singular), ``bad_header`` (rescale slope zero or not
            finite, intercept not finite).
    """
    affine = np.asarray(volume.geometry.affine, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise IngestError(f"<item {label}>: geometry not usable (voxel-to-world matrix not finite or singular: "
                          "zero, NaN or infinite spacing, or degenerate orientation); expected finite positive "
                          "spacing and an invertible orientation; fix the header or re-export", source=label,
                          reason="bad_geometry")
    slope = float(volume.header.get("rescale_slope", 1.0))
    inter = float(volume.header.get("rescale_intercept", 0.0))
    if not (np.isfinite(slope) and slope != 0 and np.isfinite(inter)):
        raise IngestError(f"<item {label}>: rescale slope {slope} / intercept {inter} not usable; expected a finite "
                          "non-zero slope and a finite intercept", source=label, reason="bad_header")


def output_name(volume: Volume, item_id: str) -> str:
    """PHI-free output name for a volume: a folder for DICOM, a file for the others."""
    fmt = volume.source.format
    if fmt == "dicom":
        return item_id
    if fmt == "nifti":
        src = volume.header.get("nifti_file", "")
        return f"{item_id}.nii.gz" if str(src).lower().endswith(".gz") else f"{item_id}.nii"
    src = str(volume.header.get("itk_file", "")).lower()
    return f"{item_id}.nrrd" if src.endswith((".nrrd", ".nhdr")) else f"{item_id}.mha"


def write_volume(volume: Volume, out_path: str | Path, *, derivation: str, uid_key: str | None = None,
                 uid_root: str | None = None, keep_descriptions: bool = False,
                 keep_private_creators: tuple[str, ...] = (), unchanged: bool = False) -> list[Path]:
    """Write ``volume`` in its source format, atomically, verified by re-reading. Returns the written files.
    DICOM: a derived copy cleaned by the Basic Profile (:mod:`medue.io.basic_profile`); ``unchanged``: the item
    carries no perturbation on purpose, which its SeriesDescription says."""
    fmt = volume.source.format
    if fmt == "dicom":
        return dicom_derive.write_dicom_series(volume, out_path, derivation=derivation, uid_key=uid_key,
                                               uid_root=uid_root, keep_descriptions=keep_descriptions,
                                               keep_private_creators=keep_private_creators, unchanged=unchanged)
    if fmt == "nifti":
        return [nifti.write_nifti(volume, out_path)]
    if fmt == "itk":
        return [itk.write_itk(volume, out_path)]
    raise ExportError(f"no writer for source format {fmt!r}; expected dicom, nifti or itk")


__all__ = ["READERS", "InputItem", "discover_inputs", "output_name", "read_item", "write_volume"]
