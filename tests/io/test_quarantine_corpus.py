"""A corpus of broken inputs: each is quarantined with a reason, the good ones are exported."""

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medue.io import discover_inputs
from medue.pipeline.config import load_config
from medue.pipeline.runner import EXIT_PARTIAL, run_pipeline
from medue.testing import make_dicom_series


def _broken_corpus(root):
    good = make_dicom_series(root / "good", slices=3, size=16, seed=5)
    # truncated DICOM: header kept, pixel data cut
    t = make_dicom_series(root / "truncated", slices=1, size=16, seed=6)[0]
    t.write_bytes(t.read_bytes()[:-300])
    # missing PixelData
    m = make_dicom_series(root / "nopixels", slices=1, size=16, seed=7)[0]
    ds = pydicom.dcmread(m)
    del ds.PixelData
    ds.save_as(m)
    # non-image DICOM (Basic Text SR)
    sr = pydicom.dcmread(make_dicom_series(root / "sr", slices=1, size=8, seed=8)[0])
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    del sr.PixelData
    sr.save_as(root / "sr" / "report.dcm")
    for f in (root / "sr").glob("img_*.dcm"):
        f.unlink()
    # wrong dimensions: 4D NIfTI with several volumes
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.int16), np.eye(4)), root / "fourd.nii.gz")
    # NaN NIfTI
    d = np.ones((4, 4, 3), np.float32)
    d[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(d, np.eye(4)), root / "nan.nii.gz")
    # not an image at all
    (root / "notes.bin").write_bytes(b"\x00garbage" * 20)
    # empty folder
    (root / "empty").mkdir()
    return good


@pytest.mark.parametrize("expected", [
    {"truncated": 1, "no_pixel_data": 1, "not_an_image": 1, "unsupported": 1, "nan_values": 1, "unrecognized": 1}])
def test_broken_inputs_quarantined_and_batch_goes_on(tmp_path, tiny_config, expected):
    root = tmp_path / "broken"
    _broken_corpus(root)
    cfg = load_config(tiny_config(input=str(root)))
    assert len(discover_inputs(root)) == 7  # 6 broken + 1 good; the empty folder contributes nothing
    summary = run_pipeline(cfg)
    assert summary.exit_code == EXIT_PARTIAL
    assert summary.counts["done"] == 1 and summary.counts["quarantined"] == 6
    reasons = {}
    for m in summary.markers:
        if m.status == "quarantined":
            reasons[m.reason] = reasons.get(m.reason, 0) + 1
            q = cfg.output_path / "quarantine" / m.item_id / "reason.json"
            info = json.loads(q.read_text())
            assert info["reason"] == m.reason and info["message"]
            assert all((q.parent / c).exists() for c in info["copies"])  # the input is kept, not lost
    assert reasons == expected
    done = [m for m in summary.markers if m.status == "done"]
    assert (cfg.output_path / "release" / done[0].outputs[0]["path"]).exists()
