"""Fuzz: every pixel-module and geometry attribute of a valid input, mutated five ways, in one batch.

Each mutation is deleted / empty / wrong type / out of range / huge. The batch must not abort, every item must end
as exported or as a record with a reason, and nothing may be exported that an independent reader (pydicom,
nibabel, SimpleITK) cannot read as the same image within the budget.
"""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom import config as dcm_config
from pydicom.dataelem import DataElement

from medue.pipeline.config import load_config
from medue.pipeline.runner import run_pipeline
from medue.testing import make_dicom_series

EPSILON = 4  # the tiny_config budget, stored units

# attribute -> (out-of-range value, huge value); deleted, empty and wrong type are generic
DICOM_ATTRIBUTES = {
    "Rows": (0, 65535),
    "Columns": (0, 65535),
    "BitsAllocated": (7, 64),
    "BitsStored": (17, 65535),
    "HighBit": (3, 65535),
    "PixelRepresentation": (2, 65535),
    "SamplesPerPixel": (3, 65535),
    "PhotometricInterpretation": ("YBR_FULL", "X" * 64),
    "PixelData": ("half", "triple"),
    "RescaleSlope": ("0", "1e300"),
    "RescaleIntercept": ("NaN", "1e300"),
    "ImagePositionPatient": (["NaN", "0", "0"], ["1e300", "0", "0"]),
    "ImageOrientationPatient": ([0, 0, 0, 0, 0, 0], [1e300, 0, 0, 0, 1, 0]),
    "PixelSpacing": ([0, 0], ["1e300", "1e300"]),
    "SliceThickness": ("-5", "1e300"),
}
KINDS = ("deleted", "empty", "wrong_type", "out_of_range", "huge")


def _mutate_dicom(ds: pydicom.Dataset, attr: str, kind: str) -> None:
    tag = pydicom.datadict.tag_for_keyword(attr)
    if kind == "deleted":
        del ds[tag]
    elif kind == "empty":
        ds[tag] = DataElement(tag, ds[tag].VR, b"" if attr == "PixelData" else None)
    elif kind == "wrong_type":
        ds[tag] = DataElement(tag, "LO", "abc")
    else:
        value = DICOM_ATTRIBUTES[attr][0 if kind == "out_of_range" else 1]
        if attr == "PixelData":
            value = ds.PixelData[:len(ds.PixelData) // 2] if value == "half" else ds.PixelData * 3
        setattr(ds, attr, value)


def _dicom_cases(root):
    cases = {}
    saved = dcm_config.settings.reading_validation_mode, dcm_config.settings.writing_validation_mode
    dcm_config.settings.reading_validation_mode = dcm_config.settings.writing_validation_mode = dcm_config.IGNORE
    try:
        for i, attr in enumerate(DICOM_ATTRIBUTES):
            for j, kind in enumerate(KINDS):
                folder = root / f"dcm_{attr}_{kind}"
                for p in make_dicom_series(folder, slices=2, size=12, seed=100 + 5 * i + j):
                    ds = pydicom.dcmread(p)
                    _mutate_dicom(ds, attr, kind)
                    ds.save_as(p)
                cases[folder.name] = "dicom"
    finally:
        dcm_config.settings.reading_validation_mode, dcm_config.settings.writing_validation_mode = saved
    return cases


NIFTI_FIELDS = {
    "dim": lambda h, kind: h["dim"].__setitem__(slice(None), {"empty": [0] * 8, "wrong_type": [3, -4, 4, 2, 1, 1, 1, 1],
                                                               "out_of_range": [9, 4, 4, 2, 1, 1, 1, 1],
                                                               "huge": [3, 32767, 32767, 32767, 1, 1, 1, 1]}[kind]),
    "pixdim": lambda h, kind: h["pixdim"].__setitem__(slice(1, 4), {"empty": 0, "wrong_type": np.nan,
                                                                    "out_of_range": -1, "huge": 1e38}[kind]),
    "datatype": lambda h, kind: h.__setitem__("datatype", {"empty": 0, "wrong_type": 2048, "out_of_range": 3,
                                                           "huge": 32767}[kind]),
    "vox_offset": lambda h, kind: h.__setitem__("vox_offset", {"empty": 0, "wrong_type": 353.5, "out_of_range": 1e6,
                                                               "huge": 3e38}[kind]),
    "scl_slope": lambda h, kind: h.__setitem__("scl_slope", {"empty": 0, "wrong_type": np.nan, "out_of_range": -np.inf,
                                                             "huge": 3e38}[kind]),
    "qform": lambda h, kind: h.__setitem__("quatern_b", {"empty": 0, "wrong_type": np.nan, "out_of_range": 5.0,
                                                         "huge": 3e38}[kind]),
}


def _nifti_cases(root):
    cases = {}
    data = (np.arange(4 * 4 * 2, dtype=np.int16).reshape(4, 4, 2) * 7) % 300
    for field, mutate in NIFTI_FIELDS.items():
        for kind in KINDS[1:]:
            img = nib.Nifti1Image(data, np.diag([0.8, 0.8, 3.0, 1.0]))
            img.header.set_data_dtype(np.int16)
            hdr = img.header.copy()
            hdr["vox_offset"] = 352
            mutate(hdr, kind)
            path = root / f"nii_{field}_{kind}.nii"
            path.write_bytes(hdr.binaryblock + b"\x00" * 4 + data.tobytes(order="F"))
            cases[path.name] = "nifti"
    return cases


MHA_FIELDS = {
    "NDims": {"empty": "", "wrong_type": "abc", "out_of_range": "7", "huge": "99999999"},
    "DimSize": {"empty": "", "wrong_type": "a b c", "out_of_range": "4 4 -2", "huge": "65535 65535 1000"},
    "ElementType": {"empty": "", "wrong_type": "MET_STRING", "out_of_range": "MET_LONG_ARRAY", "huge": "X" * 300},
    "ElementSpacing": {"empty": "", "wrong_type": "a b c", "out_of_range": "0 0 0", "huge": "1e300 1e300 1e300"},
    "Offset": {"empty": "", "wrong_type": "a b c", "out_of_range": "nan 0 0", "huge": "1e300 0 0"},
}


def _mha_cases(root):
    cases = {}
    data = ((np.arange(2 * 4 * 4, dtype=np.int16).reshape(2, 4, 4) * 11) % 500).astype(np.int16)
    for field, values in MHA_FIELDS.items():
        for kind, value in values.items():
            header = {"ObjectType": "Image", "NDims": "3", "BinaryData": "True", "BinaryDataByteOrderMSB": "False",
                      "Offset": "0 0 0", "ElementSpacing": "1 1 2", "DimSize": "4 4 2", "ElementType": "MET_SHORT"}
            header[field] = value
            text = "".join(f"{k} = {v}\n" for k, v in header.items()) + "ElementDataFile = LOCAL\n"
            path = root / f"mha_{field}_{kind}.mha"
            path.write_bytes(text.encode() + data.tobytes())
            cases[path.name] = "mha"
    return cases


def _independent_read(kind, paths):
    """The stored values as a reader other than medue sees them, or None when it cannot read them."""
    try:
        if kind == "dicom":
            dss = [pydicom.dcmread(p) for p in paths]
            return np.stack([ds.pixel_array for ds in dss]).astype(np.float64)
        if kind == "nifti":
            img = nib.load(paths[0])
            return np.asarray(img.dataobj.get_unscaled(), dtype=np.float64)
        return sitk.GetArrayFromImage(sitk.ReadImage(str(paths[0]))).astype(np.float64)
    except Exception:
        return None


@pytest.fixture
def fuzz_corpus(tiny_config, tmp_path):
    root = tmp_path / "fuzz"
    root.mkdir()
    cases = {**_dicom_cases(root), **_nifti_cases(root), **_mha_cases(root)}
    make_dicom_series(root / "good_series", slices=2, size=12, seed=1)
    cases["good_series"] = "dicom"
    cfg = load_config(tiny_config(input=str(root), fidelity={"min_psnr_db": 10, "min_ssim": 0.0,
                                                               "max_abs_units": EPSILON}))
    return cfg, cases


def test_fuzzed_inputs_never_abort_and_nothing_wrong_is_exported(fuzz_corpus):
    cfg, cases = fuzz_corpus
    summary = run_pipeline(cfg)  # must not raise
    assert summary.exit_code in (0, 3, 4)
    index = json.loads((cfg.output_path / "private" / "inputs.local.json").read_text())
    root = cfg.input_path.resolve()

    def case_of(item_id):
        first = index[item_id]["paths"][0]
        rel = __import__("pathlib").Path(first).resolve().relative_to(root)
        return rel.parts[0]

    seen = {}
    for m in summary.markers:
        assert m.status in ("done", "quarantined", "failed", "gate_failed"), m
        if m.status != "done":
            assert m.reason and m.message, m
            assert "Traceback" not in m.message and str(root) not in json.dumps(m.to_dict())
        seen[case_of(m.item_id)] = m
    ignored = json.loads((cfg.output_path / "private" / "ignored.local.json").read_text()) \
        if (cfg.output_path / "private" / "ignored.local.json").exists() else []
    ignored_names = {__import__("pathlib").Path(str(i.get("path", ""))).name for i in ignored}
    # every case is accounted for: an item record, or a file listed as ignored with its reason
    unaccounted = [c for c in cases if c not in seen and c not in ignored_names]
    assert not unaccounted, unaccounted
    assert seen["good_series"].status == "done"

    wrongly_exported = []
    for case, m in seen.items():
        if m.status != "done":
            continue
        kind = cases[case]
        inputs = sorted(index[m.item_id]["paths"])
        outputs = [cfg.output_path / "release" / o["path"] for o in m.outputs]
        before = _independent_read(kind, inputs)
        after = _independent_read(kind, outputs)
        if before is None or after is None or before.size != after.size:
            wrongly_exported.append((case, "not readable as the same image by an independent reader"))
            continue
        if kind == "dicom":  # same instances, compared in sorted order of their source SOP
            order_in = [pydicom.dcmread(p).SOPInstanceUID for p in inputs]
            src = [pydicom.dcmread(p).SourceImageSequence[0].ReferencedSOPInstanceUID for p in outputs]
            after = np.stack([after[src.index(u)] for u in order_in])
        diff = np.abs(after.reshape(before.shape) - before)
        if not math.isfinite(diff.max()) or diff.max() > EPSILON:
            wrongly_exported.append((case, f"max |delta| {diff.max()}"))
    assert not wrongly_exported, wrongly_exported
