"""Reading DICOM series (medue.io.dicom): sort order, stored units, de-identification, grouping, decoders and the
answers for what medue cannot read."""

import numpy as np
import pydicom
import pytest

from medue.errors import DeidentificationError, IngestError
from medue.io import discover_inputs, read_item, write_volume
from medue.io.dicom import read_dicom_series
from medue.testing import make_dicom_series


def test_read_sorts_by_position_and_keeps_stored_units(tmp_path):
    paths = make_dicom_series(tmp_path / "s", slices=5, size=16, seed=3)
    vol = read_dicom_series(paths)
    z = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in paths]
    expected = np.stack([pydicom.dcmread(p).pixel_array for p in np.asarray(paths)[np.argsort(z)]])
    assert vol.array.dtype == np.int16 and np.array_equal(vol.array, expected)
    assert vol.rescale == (1.0, -1024.0)
    assert vol.modality == "CT" and vol.source.format == "dicom"
    np.testing.assert_allclose(vol.geometry.spacing_mm, (0.7, 0.7, 2.5), rtol=1e-6)
    assert vol.header["valid_range"] == (-32768, 32767)


def test_deidentification_policy(tmp_path):
    paths = make_dicom_series(tmp_path / "s", slices=2, size=8, deidentified=False)
    with pytest.raises(DeidentificationError, match="does not declare de-identification"):
        read_dicom_series(paths, deidentification="refuse")
    vol = read_dicom_series(paths, deidentification="warn")
    assert any("de-identification" in w for w in vol.history[-1].warnings)


def test_a_de_identified_flag_is_not_trusted_over_identifying_attributes(tmp_path):
    paths = make_dicom_series(tmp_path / "s", slices=2, size=8)  # flagged PatientIdentityRemoved=YES
    assert read_dicom_series(paths, deidentification="refuse").modality == "CT"
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PatientBirthDate = "19600101"
        ds.InstitutionName = "St Elsewhere Hospital"
        ds.PatientComments = "called Jane on Monday"
        ds.save_as(p)
    with pytest.raises(DeidentificationError) as err:
        read_dicom_series(paths, deidentification="refuse")
    text = str(err.value)
    assert "(PatientBirthDate, InstitutionName)" in text and "PS3.15" in text  # comments: removed at export
    assert "19600101" not in text and "Elsewhere" not in text and "Jane" not in text  # named, never shown
    vol = read_dicom_series(paths, deidentification="warn")
    assert any("InstitutionName" in w for w in vol.history[-1].warnings)
    # a site that applies the Retain Institution Identity option keeps the institution
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.PatientBirthDate
        ds.save_as(p)
    assert read_dicom_series(paths, deidentification="refuse", retain=("institution_identity",)).modality == "CT"


def test_a_derived_copy_carries_no_description_and_no_private_attribute_unless_kept(tmp_path):
    """PS3.15 Basic Profile at export: descriptors and private blocks removed (a listed creator's block kept), the
    SeriesDescription medue's own words, "UNCHANGED" for an item left unchanged on purpose."""
    from medue.io import read_item, InputItem, write_volume
    from medue.testing import add_descriptions_and_private_blocks

    paths = make_dicom_series(tmp_path / "s", slices=2, size=8)
    for p in paths:
        add_descriptions_and_private_blocks(pydicom.dcmread(p)).save_as(p)
    volume = read_item(InputItem("dicom", tuple(str(p) for p in paths), "s"))
    out = write_volume(volume, tmp_path / "out1", derivation="test", keep_private_creators=("SITE KEEP",))
    ds = pydicom.dcmread(out[0])
    for keyword in ("StudyDescription", "ProtocolName", "ImageComments"):
        assert keyword not in ds
    assert ds.SeriesDescription == "PROTECTED (medue)"
    text = str(ds)
    assert "ACME" not in text and "Jane" not in text and "scanner-calibration-7" in text
    out = write_volume(volume, tmp_path / "out2", derivation="test", keep_descriptions=True, unchanged=True)
    ds = pydicom.dcmread(out[0])
    assert ds.StudyDescription == "MRI head of J. Doe" and ds.SeriesDescription.startswith("UNCHANGED (medue")
    assert "SITE KEEP" not in str(ds)  # not listed this time: removed


def test_series_grouping_splits_two_series(tmp_path):
    make_dicom_series(tmp_path / "a", slices=3, size=8, seed=1)
    make_dicom_series(tmp_path / "b", slices=2, size=8, seed=2)
    items = discover_inputs(tmp_path)
    assert sorted(len(i.paths) for i in items) == [2, 3] and all(i.kind == "dicom" for i in items)


def test_compressed_input_decoded_and_written_uncompressed(tmp_path):
    import pydicom.data

    src = pydicom.data.get_testdata_file("MR_small_jp2klossless.dcm")
    if src is None:
        pytest.skip("pydicom test file not available")
    vol = read_dicom_series([src], deidentification="ignore")
    ref = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm")).pixel_array
    assert np.array_equal(vol.array[0], ref)  # lossless JPEG 2000 decoded exactly
    files = write_volume(vol, tmp_path / "o", derivation="x")
    out = pydicom.dcmread(files[0])
    assert out.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert np.array_equal(out.pixel_array, ref)
    # decompressed from a lossless source, never lossy: said so (the source's own header is left as it was read)
    assert out.LossyImageCompression == "00"


def test_missing_decoder_gives_clear_reason(tmp_path, monkeypatch):
    import pydicom.data

    src = pydicom.data.get_testdata_file("MR_small_jp2klossless.dcm")
    ds = pydicom.dcmread(src)

    def fail(self):
        raise RuntimeError("Unable to decompress 'JPEG 2000 Lossless' pixel data because all plugins are missing "
                           "dependencies")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(fail))
    with pytest.raises(IngestError, match="pylibjpeg-openjpeg") as info:
        read_dicom_series([src], deidentification="ignore")
    assert info.value.reason == "missing_decoder"
    assert ds.file_meta.TransferSyntaxUID.is_compressed


def test_read_item_records_reader(tmp_path):
    make_dicom_series(tmp_path / "s", slices=2, size=8)
    vol = read_item(discover_inputs(tmp_path)[0], root=tmp_path)
    assert vol.history[0].name == "read:dicom"
    assert all(not p.startswith("/") for p in vol.source.paths)  # relative, no absolute site paths


@pytest.mark.parametrize("change, reason", [
    ({"PatientIdentityRemoved": "NO", "DeidentificationMethod": ""}, "PatientIdentityRemoved is NO"),
    ({"BurnedInAnnotation": "YES"}, "BurnedInAnnotation"),
    ({"PhotometricInterpretation": "PALETTE COLOR"}, "PALETTE COLOR"),
])
def test_identity_and_palette_problems_are_refused(tmp_path, change, reason):
    paths = make_dicom_series(tmp_path / "s", slices=2, size=16)
    for p in paths:
        ds = pydicom.dcmread(p)
        for k, v in change.items():
            setattr(ds, k, v)
        ds.save_as(p)
    with pytest.raises(IngestError, match=reason):
        read_dicom_series(paths, deidentification="refuse")


def test_uid_root_is_validated_with_the_config(tiny_config):
    from medue.errors import InvalidConfigError
    from medue.pipeline.config import load_config

    with pytest.raises(InvalidConfigError, match="uid_root"):
        load_config(tiny_config(uid_root="1.2.abc"))
    assert load_config(tiny_config(uid_root="1.2.826.0.1.3680043.10.999.")).uid_root.endswith("999.")


@pytest.mark.parametrize("sop_class, delete, expect", [
    ("1.2.840.10008.5.1.4.1.1.6.1", None, None),  # grayscale ultrasound: an image, accepted
    ("1.2.840.10008.5.1.4.1.1.481.2", None, ("not_an_image", "dose grid")),  # RT Dose
    ("1.2.840.10008.5.1.4.1.1.66.4", None, ("not_an_image", "labels")),  # Segmentation
    ("1.2.840.10008.5.1.4.1.1.2", "SOPInstanceUID", ("bad_header", "SOPInstanceUID missing")),
    ("1.2.840.10008.5.1.4.1.1.2", "SeriesInstanceUID", ("bad_header", "SeriesInstanceUID missing")),
])
def test_storage_classes_and_missing_uids_get_their_own_answer(tmp_path, sop_class, delete, expect):
    paths = make_dicom_series(tmp_path / "s", slices=1, size=8)
    ds = pydicom.dcmread(paths[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    if delete:
        delattr(ds, delete)
    ds.save_as(paths[0])
    items = discover_inputs(tmp_path / "s")
    assert len(items) == 1 and items[0].kind == "dicom"  # a DICOM file, whatever it lacks, is not 'unrecognized'
    if expect is None:
        assert read_item(items[0]).array.shape == (1, 8, 8)
    else:
        with pytest.raises(IngestError, match=expect[1]) as info:
            read_item(items[0])
        assert info.value.reason == expect[0]


def test_inspect_and_run_give_the_same_verdict(tmp_path, tiny_config, capsys):
    from medue.cli import main
    from medue.pipeline.config import load_config
    from medue.pipeline.runner import run_pipeline

    cfg = load_config(tiny_config())
    bad = make_dicom_series(cfg.input_path / "bad", slices=2, size=8, seed=9)
    for p in bad:
        ds = pydicom.dcmread(p)
        ds.HighBit = 3
        ds.save_as(p)
    no_id = make_dicom_series(cfg.input_path / "identified", slices=1, size=8, seed=8, deidentified=False)
    assert no_id
    main(["inspect", str(cfg.input_path), "--config", str(tiny_config())])
    said = {line.split()[0]: "QUARANTINE" in line for line in capsys.readouterr().out.splitlines()[1:]}
    summary = run_pipeline(cfg)
    refused = {m.item_id: m.status == "quarantined" for m in summary.markers}
    assert said == refused and sum(said.values()) == 2
