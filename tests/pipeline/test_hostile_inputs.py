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
    statuses = {m.item_id: m.status for m in summary.markers}
    assert list(statuses.values()).count("done") >= 2  # the two good inputs of the fixture
    bad = [m for m in summary.markers if m.status != "done"]
    assert len(bad) >= len(MUTATIONS)  # every mutation (and the complex/RGB NIfTI) is an item record
    for m in bad:
        assert m.status in ("quarantined", "failed", "gate_failed") and m.message
        assert "Traceback" not in m.message and str(hostile_config.input_path) not in json.dumps(m.to_dict())
    exported = {m.item_id for m in summary.markers if m.status == "done"}
    manifest = json.loads((hostile_config.output_path / "release" / "manifest.json").read_text())
    assert {i["item_id"] for i in manifest["items"] if i["outputs"]} == exported


def test_a_name_that_is_not_utf8_is_read_and_a_link_out_of_the_input_is_not_followed(tiny_config, tmp_path):
    import os

    from medue.testing import make_nifti

    cfg = load_config(tiny_config())
    raw = os.fsencode(cfg.input_path) + b"/scan_\xff\xfe.nii.gz"
    make_nifti(tmp_path / "x.nii.gz", shape=(12, 10, 2), seed=5)
    os.rename(os.fsencode(tmp_path / "x.nii.gz"), raw)
    secret = tmp_path / "system_file.dcm"
    secret.write_bytes(b"root:x:0:0:SECRET_SYSTEM_CONTENT" * 10)
    (cfg.input_path / "links").mkdir()
    (cfg.input_path / "links" / "passwd.dcm").symlink_to(secret)
    summary = run_pipeline(cfg)
    assert summary.counts["done"] == 3 and not summary.counts.get("failed")  # the odd name did not stop the batch
    ignored = json.loads((cfg.output_path / "private" / "ignored.local.json").read_text())
    assert ignored == [{"path": "links/passwd.dcm",
                        "reason": "symbolic link to a file outside the input folder (not followed)"}]
    for path in cfg.output_path.rglob("*"):  # the linked file was copied nowhere, not even to quarantine
        assert not (path.is_file() and b"SECRET_SYSTEM_CONTENT" in path.read_bytes()), path


def test_a_labels_table_that_is_not_utf8_is_a_config_error_that_says_so(tiny_config, tmp_path):
    from medue.errors import InvalidConfigError

    table = tmp_path / "labels.csv"
    table.write_bytes(b"path,label\nvol.nii.gz,tumeur_\xe9\nseries_a,normal\n")  # Latin-1 from a spreadsheet
    cfg = load_config(tiny_config(labels={"source": "table", "table": str(table)}))
    with pytest.raises(InvalidConfigError, match="not UTF-8 text .byte 0xe9.*save it as UTF-8"):
        run_pipeline(cfg)


def test_a_labels_table_that_is_another_file_is_refused_without_showing_its_content(tiny_config, tmp_path):
    """A labels table linked to a system file (one field per line): the error names the file and what a table
    looks like, never the file's first line."""
    from medue.errors import InvalidConfigError

    other = tmp_path / "passwd"
    other.write_text("root:x:0:0:SECRET_SYSTEM_CONTENT:/root:/bin/bash\n")
    (tmp_path / "labels.csv").symlink_to(other)
    cfg = load_config(tiny_config(labels={"source": "table", "table": str(tmp_path / "labels.csv")}))
    with pytest.raises(InvalidConfigError) as err:
        run_pipeline(cfg)
    text = str(err.value)
    assert "SECRET_SYSTEM_CONTENT" not in text and "root:x" not in text
    assert "not a header row of column names" in text and "path,label" in text
