"""Labelled benchmark sets as files, the way a site would hold them: one image file per slice plus a labels table.

Layout written by :func:`write_image_set` (and read by ``medue evaluate``)::

    ROOT/
      dataset.json          name, origin, image size, format, split seed, counts per class and split
      train/<id>.nii.gz     (or train/<id>.dcm: one single-frame Secondary Capture instance per image)
      test/<id>...
      train_labels.csv      path,label   (path relative to train/)
      test_labels.csv       path,label   (path relative to test/)

Ids are ``img_00000``...: nothing from the source's file names is kept. The split is stratified by class with
a fixed seed (:func:`stratified_split`), so the same ROOT is the same benchmark for everyone.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("nifti", "dicom")


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)``: ``test_fraction`` of every class (rounded) goes to test, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * test_fraction))
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(np.asarray(train, dtype=int)), np.sort(np.asarray(test, dtype=int))


def _write_nifti(path: Path, image: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(image.T[:, :, None]), np.diag([1.0, 1.0, 1.0, 1.0]))
    img.header.set_data_dtype(image.dtype)
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    nib.save(img, str(path))


def _write_dicom(path: Path, image: np.ndarray, uid_seed: str) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    sop = generate_uid(entropy_srcs=[f"sop-{uid_seed}"])
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"study-{uid_seed}"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"series-{uid_seed}"])
    ds.Modality = "MR"
    ds.ConversionType = "WSD"
    ds.PatientName = "Anonymous"
    ds.PatientID = "ANON"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "public research benchmark image; no identifiers"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(v) for v in image.shape)
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_image_set(root: str | Path, images: np.ndarray, labels: np.ndarray, class_names: list[str], *,
                    fmt: str = "nifti", test_fraction: float = 0.2, seed: int = 0, name: str = "dataset",
                    origin: str = "") -> dict[str, Any]:
    """Write uint8 ``images`` ``(N, H, W)`` with class ``labels`` as a benchmark set (layout in the module doc)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W), got {images.dtype} {images.shape}")
    root = Path(root)
    train, test = stratified_split(np.asarray(labels), test_fraction, seed)
    counts: dict[str, dict[str, int]] = {}
    for split, idx in (("train", train), ("test", test)):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in idx:
            name_i = f"img_{int(i):05d}" + (".nii.gz" if fmt == "nifti" else ".dcm")
            if fmt == "nifti":
                _write_nifti(folder / name_i, images[i])
            else:
                _write_dicom(folder / name_i, images[i], f"{name}-{int(i)}")
            rows.append((name_i, class_names[int(labels[i])]))
        with open(root / f"{split}_labels.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label"])
            writer.writerows(rows)
        counts[split] = {c: sum(1 for _, lab in rows if lab == c) for c in class_names}
    info = {"name": name, "origin": origin, "format": fmt, "image_size": list(images.shape[1:]),
            "test_fraction": test_fraction, "split_seed": seed, "classes": list(class_names), "counts": counts}
    (root / "dataset.json").write_text(json.dumps(info, indent=2))
    return info
