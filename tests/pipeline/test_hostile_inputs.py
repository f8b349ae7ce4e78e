"""Hostile inputs: every mutated file ends as that item's quarantine or failure record; the batch goes on."""

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medue.pipeline.config import load_config
from medue.pipeline.runner import run_pipeline
from medue.testing import make_dicom_series

MUTATIONS = {
    "iop_text": lambda ds: (delattr(ds, "ImageOrientationPatient"), ds.add_new(0x00200037, "LO", "abc")),
    "iop_five": lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1]),
    "no_bits_stored": lambda ds: delattr(ds, "BitsStored"),
    "no_pixel_representation": lambda ds: delattr(ds, "PixelRepresentation"),
    "pixels_too_long": lambda ds: setattr(ds, "PixelData", ds.PixelData + b"\x00" * 64),
    "rows_huge": lambda ds: setattr(ds, "Rows", 65535),
    "bits_allocated_text": lambda ds: setattr(ds, "BitsAllocated", 12),
}


@pytest.fixture
def hostile_config(tiny_config, tmp_path):
    cfg = load_config(tiny_config())
    root = cfg.input_path
    from pydicom import config as dcm_config

    saved = dcm_config.settings.reading_validation_mode, dcm_config.settings.writing_validation_mode
    dcm_config.settings.reading_validation_mode = dcm_config.settings.writing_validation_mode = dcm_config.IGNORE
    for k, (name, mutate) in enumerate(MUTATIONS.items()):
        paths = make_dicom_series(root / f"bad_{name}", slices=2, size=16, seed=10 + k)
        for p in paths:
            ds = pydicom.dcmread(p)
            mutate(ds)
            ds.save_as(p)
    dcm_config.settings.reading_validation_mode, dcm_config.settings.writing_validation_mode = saved
    nib.save(nib.Nifti1Image(np.ones((8, 8, 2), dtype=np.complex64), np.eye(4)), str(root / "complex.nii"))
    rgb = np.zeros((8, 8, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(root / "rgb.nii"))
    return cfg


def test_no_hostile_input_aborts_the_batch(hostile_config):
    summary = run_pipeline(hostile_config)
    assert summary.exit_code == 4  # partial: the good items are exported, the bad ones are accounted for
    statuses = {m["item_id"]: m["status"] for m in summary.markers}
    assert list(statuses.values()).count("done") >= 2  # the two good inputs of the fixture
    bad = [m for m in summary.markers if m["status"] != "done"]
    assert len(bad) >= len(MUTATIONS)  # every mutation (and the complex/RGB NIfTI) is an item record
    for m in bad:
        assert m["status"] in ("quarantined", "failed", "gate_failed") and m.get("message")
        assert "Traceback" not in m["message"] and str(hostile_config.input_path) not in json.dumps(m)
    exported = {m["item_id"] for m in summary.markers if m["status"] == "done"}
    manifest = json.loads((hostile_config.output_path / "release" / "manifest.json").read_text())
    assert {i["item_id"] for i in manifest["items"] if i["outputs"]} == exported
