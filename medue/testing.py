"""Synthetic volumes and files for tests, docs and benchmarks (public API; no PHI, no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medue.provenance import StepRecord
from medue.volume import Geometry, SourceRef, Volume


def phantom(shape: tuple[int, int, int], *, seed: int = 0, low: int = -1000, high: int = 400) -> np.ndarray:
    """A ``(z, y, x)`` int16 body-like phantom: air outside an ellipse, soft tissue with noise and a bright disc."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    yy, xx = np.mgrid[:y, :x]
    body = ((yy - y / 2) / (0.42 * y)) ** 2 + ((xx - x / 2) / (0.45 * x)) ** 2 <= 1
    disc = ((yy - y / 2.5) ** 2 + (xx - x / 1.7) ** 2) <= (min(x, y) / 8) ** 2
    out = np.full(shape, low, dtype=np.int16)
    for k in range(z):
        sl = np.where(body, 40 + rng.normal(0, 20, (y, x)), low)
        sl = np.where(disc, high - 50 * k / max(z, 1), sl)
        out[k] = np.clip(np.round(sl), low, high)
    return out


def make_volume(shape: tuple[int, int, int] = (4, 32, 32), *, seed: int = 0, dtype: str = "int16",
                slope: float = 1.0, intercept: float = 0.0, modality: str = "CT") -> Volume:
    """An in-memory Volume holding :func:`phantom` data (shifted into range for unsigned dtypes)."""
    arr = phantom(shape, seed=seed).astype(np.int32)
    if np.dtype(dtype).kind == "u":
        arr = arr - arr.min()
    arr = arr.astype(dtype)
    source = SourceRef(paths=("synthetic",), sha256=("0" * 64,), format="synthetic", volume_id=f"synthetic-{seed}")
    vol = Volume(array=arr, geometry=Geometry(affine=np.diag([0.7, 0.7, 2.5, 1.0])), modality=modality,
                 source=source, header={"rescale_slope": slope, "rescale_intercept": intercept})
    return vol.with_step(StepRecord(name="synthetic", output_fingerprint=vol.fingerprint))


def random_slices(n: int = 16, size: int = 16, seed: int = 0) -> tuple:
    """``(x, y, space)`` for protector tests: ``n`` random 8-bit slices ``(n, 1, size, size)`` in stored units
    (float), alternating labels 0/1 and the 0-255 unit space."""
    import torch

    from medue.protect.base import UnitSpace

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, size, size), generator=g).float()
    return x, torch.arange(n) % 2, UnitSpace(0.0, 255.0, 0.0, 255.0)


def make_dicom_series(folder: str | Path, *, slices: int = 4, size: int = 32, seed: int = 0,
                      deidentified: bool = True, series_uid: str | None = None, start_z: float = 0.0,
                      spacing: float = 2.5, transfer_syntax: str = ExplicitVRLittleEndian,
                      shuffle_names: bool = True) -> list[Path]:
    """Write a CT series (int16, rescale intercept -1024) of ``slices`` files; returns the paths.

    File names are shuffled relative to slice order so readers must sort by position.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hu = phantom((slices, size, size), seed=seed)
    stored = (hu.astype(np.int32) + 1024).astype(np.int16)
    series_uid = series_uid or generate_uid(entropy_srcs=[f"series-{seed}-{start_z}"])
    study_uid = generate_uid(entropy_srcs=[f"study-{seed}"])
    for_uid = generate_uid(entropy_srcs=[f"for-{seed}"])
    order = np.random.default_rng(seed).permutation(slices) if shuffle_names else np.arange(slices)
    paths = []
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid(entropy_srcs=[f"sop-{seed}-{start_z}-{k}"])
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = transfer_syntax
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = for_uid
        ds.Modality = "CT"
        ds.PatientName = "Synthetic^Phantom"
        ds.PatientID = "SYNTH0001"
        if deidentified:
            ds.PatientIdentityRemoved = "YES"
            ds.DeidentificationMethod = "synthetic data"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesDescription = "synthetic phantom"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-size / 2, -size / 2, start_z + spacing * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = spacing
        ds.Rows = size
        ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = stored[k].tobytes()
        path = folder / f"img_{int(order[k]):03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def make_nifti(path: str | Path, *, shape: tuple[int, int, int] = (24, 20, 6), dtype: str = "int16",
               slope: float = 2.0, inter: float = -10.0, seed: int = 0) -> Path:
    """Write a NIfTI-1 file with integer data, non-trivial scl_slope/scl_inter and qform/sform codes."""
    import nibabel as nib

    data = phantom(shape[::-1], seed=seed).transpose(2, 1, 0)
    data = (data.astype(np.int32) - data.min()).astype(dtype) if np.dtype(dtype).kind == "u" else data.astype(dtype)
    affine = np.array([[-0.8, 0, 0, 10], [0, 0.8, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(dtype)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=2)
    img.header["scl_slope"] = slope
    img.header["scl_inter"] = inter
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # nibabel would rescale on save; write raw so the stored ints and scaling are exactly as given
    img.header.set_slope_inter(slope, inter)
    img.header["vox_offset"] = 352
    header_bytes = img.header.binaryblock + b"\x00" * 4
    body = np.asarray(data, dtype=img.header.get_data_dtype()).tobytes(order="F")
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(header_bytes)
        fh.write(body)
    return path


def make_release_efficacy(method: str, params: dict, *, drop: float = 0.0, protected: float = 0.5,
                          clean: float = 0.95, name: str = "synthetic", modality: str = "OT",
                          image_size: tuple[int, int] = (16, 16), classes: tuple[str, ...] = ("a", "b")) -> dict:
    """A release-efficacy result (``medue.release_efficacy/1``) with chosen numbers, for report and gate tests.

    ``params`` must be the protector's resolved parameters (``build_protector(method, **p).params()``), and
    ``modality``, ``image_size`` and ``classes`` the release's (:class:`medue.evidence.ReleaseFacts`), for the
    result to apply to a release.
    """
    rows = [{"attack": "resnet18_flip_crop", "habit": "plain", "architecture": "resnet18",
             "augmentation": "flip_crop", "countermeasure": "none",
             "training_data": data, "seed": seed, "train_accuracy": 1.0,
             "clean_test_accuracy": clean if data == "clean" else protected, "epochs": 1, "seconds": 0.1, "fit": True}
            for data, seed in (("clean", 0), ("protected", 0), ("protected", 1))]
    diag = {"images": 100, "accuracy_original": 0.9, "accuracy_protected": round(0.9 - drop, 4),
            "accuracy_drop": drop, "agreement": 0.9, "max_accuracy_drop": 0.02, "passed": drop <= 0.02}
    return {"schema": "medue.release_efficacy/1", "name": name,
            "dataset": {"name": "synthetic-set", "format": "nifti", "modality": modality, "train": 80, "test": 20,
                        "classes": list(classes), "majority_class_accuracy": 0.5, "split_seed": 0},
            "image_size": list(image_size), "method": method, "params": params, "labels_used": True,
            "exported": {"a": 40, "b": 40}, "expected": {"a": 40, "b": 40}, "not_exported": {}, "rows": rows,
            "diagnostic": {"resnet18": diag, "plain_cnn": {**diag, "accuracy_drop": 0.0}}}


def add_descriptions_and_private_blocks(ds: Dataset) -> Dataset:
    """Give ``ds`` what a derived copy must not carry (free-text descriptions naming a patient, a vendor's private
    block with a name) and one private block a site keeps (creator ``SITE KEEP``); returns ``ds``."""
    ds.StudyDescription = "MRI head of J. Doe"
    ds.ProtocolName = "doe protocol"
    ds.ImageComments = "called Jane on Monday"
    ds.private_block(0x0011, "ACME 1.1", create=True).add_new(0x01, "LO", "patient Jane Doe")
    ds.private_block(0x0013, "SITE KEEP", create=True).add_new(0x01, "LO", "scanner-calibration-7")
    return ds
