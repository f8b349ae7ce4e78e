import numpy as np
import pydicom
import pytest

from medue.errors import DeidentificationError, ExportError, IngestError
from medue.io import discover_inputs, read_item, write_volume
from medue.io.dicom import read_dicom_series
from medue.io.dicom_derive import write_dicom_series
from medue.provenance import StepRecord
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


def test_roundtrip_derived_series(tmp_path):
    paths = make_dicom_series(tmp_path / "s", slices=3, size=16)
    vol = read_dicom_series(paths)
    arr = vol.array.copy()
    arr[1, 4, 5] += 3
    files = write_dicom_series(vol.with_array(arr, StepRecord(name="t")), tmp_path / "out", derivation="unit test",
                               uid_key="k")
    srcs = [pydicom.dcmread(p) for p in vol.header["dicom_files"]]
    outs = [pydicom.dcmread(f) for f in files]
    assert np.array_equal(np.stack([o.pixel_array for o in outs]), arr)
    assert len({o.SeriesInstanceUID for o in outs}) == 1 and outs[0].SeriesInstanceUID != srcs[0].SeriesInstanceUID
    for s, o in zip(srcs, outs):
        assert o.SOPInstanceUID != s.SOPInstanceUID and o.SOPInstanceUID == o.file_meta.MediaStorageSOPInstanceUID
        assert list(o.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert o.DerivationDescription == "unit test"
        assert o.SourceImageSequence[0].ReferencedSOPInstanceUID == s.SOPInstanceUID
        assert o.ContributingEquipmentSequence[-1].Manufacturer == "medue"
        assert o.ContributingEquipmentSequence[-1].PurposeOfReferenceCodeSequence[0].CodeValue == "109103"
        for tag in ("SOPClassUID", "BitsAllocated", "BitsStored", "PixelRepresentation", "RescaleSlope",
                    "RescaleIntercept", "WindowCenter", "WindowWidth", "StudyInstanceUID", "FrameOfReferenceUID",
                    "ImagePositionPatient"):
            assert o.get(tag) == s.get(tag), tag
    # keyed UIDs are deterministic: a second export gives the same UIDs
    again = write_dicom_series(vol.with_array(arr, StepRecord(name="t")), tmp_path / "out2", derivation="x", uid_key="k")
    assert [pydicom.dcmread(f).SOPInstanceUID for f in again] == [o.SOPInstanceUID for o in outs]


def test_writing_takes_the_headers_read_with_the_pixels_and_reads_no_source_again(tmp_path):
    import shutil

    paths = make_dicom_series(tmp_path / "s", slices=3, size=16)
    vol = read_dicom_series(paths)
    shutil.move(tmp_path / "s", tmp_path / "moved")  # the sources are gone: the headers read with them are kept
    files = write_dicom_series(vol.with_array(vol.array, StepRecord(name="t")), tmp_path / "out", derivation="x",
                               uid_key="k")
    assert len(files) == 3 and all(pydicom.dcmread(f).ImageType[0] == "DERIVED" for f in files)
    with pytest.raises(ExportError, match="source series is no longer readable"):  # the kept headers were used up
        write_dicom_series(vol.with_array(vol.array, StepRecord(name="t")), tmp_path / "out2", derivation="x")
    assert not (tmp_path / "out2").exists()


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
    assert "(PatientBirthDate, PatientComments, InstitutionName)" in text and "PS3.15" in text
    assert "19600101" not in text and "Elsewhere" not in text and "Jane" not in text  # named, never shown
    vol = read_dicom_series(paths, deidentification="warn")
    assert any("InstitutionName" in w for w in vol.history[-1].warnings)


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


def test_export_refuses_volume_without_sources(tmp_path):
    from medue.testing import make_volume

    with pytest.raises(ExportError, match="no DICOM source files"):
        write_dicom_series(make_volume(), tmp_path / "o", derivation="x")


def test_read_item_records_reader(tmp_path):
    make_dicom_series(tmp_path / "s", slices=2, size=8)
    vol = read_item(discover_inputs(tmp_path)[0], root=tmp_path)
    assert vol.history[0].name == "read:dicom"
    assert all(not p.startswith("/") for p in vol.source.paths)  # relative, no absolute site paths


def test_big_endian_source_is_written_little_endian_with_medue_identity(tmp_path):
    import shutil

    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian

    from medue.io.dicom_derive import DERIVATION_CODE, MEDUE_IMPLEMENTATION_UID

    src_path = tmp_path / "in" / "be.dcm"
    src_path.parent.mkdir()
    shutil.copy(get_testdata_file("MR_small_bigendian.dcm"), src_path)
    vol = read_dicom_series([src_path], deidentification="ignore")
    arr = vol.array.astype(vol.array.dtype.newbyteorder("=")).copy()
    arr[0, 3, 3] += 2
    (out,) = write_dicom_series(vol.with_array(arr.astype(vol.array.dtype), StepRecord(name="t")), tmp_path / "out",
                                derivation="unit test", uid_key="k")
    ds = pydicom.dcmread(out)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and np.array_equal(ds.pixel_array[None], arr)
    assert ds.file_meta.ImplementationClassUID == MEDUE_IMPLEMENTATION_UID
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    code = ds.DerivationCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == DERIVATION_CODE


def test_icon_image_and_inherited_derivation_codes_are_not_carried_over(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    paths = make_dicom_series(tmp_path / "s", slices=2, size=16)
    for p in paths:
        ds = pydicom.dcmread(p)
        icon = Dataset()
        icon.Rows = icon.Columns = 4
        ds.IconImageSequence = Sequence([icon])
        old = Dataset()
        old.CodeValue, old.CodingSchemeDesignator, old.CodeMeaning = "121327", "DCM", "Full fidelity image"
        ds.DerivationCodeSequence = Sequence([old])
        ds.save_as(p)
    vol = read_dicom_series(paths)
    files = write_dicom_series(vol.with_array(vol.array.copy(), StepRecord(name="t")), tmp_path / "out",
                               derivation="unit test", uid_key="k")
    for f in files:
        ds = pydicom.dcmread(f)
        assert "IconImageSequence" not in ds
        assert [c.CodeValue for c in ds.DerivationCodeSequence] == ["113042"]


def test_duplicate_source_uids_get_distinct_new_uids_and_split_series_get_two_series(tmp_path):
    paths = make_dicom_series(tmp_path / "s", slices=3, size=16)
    dup = pydicom.dcmread(paths[0]).SOPInstanceUID
    for p in paths[1:]:
        ds = pydicom.dcmread(p)
        ds.SOPInstanceUID = dup
        ds.file_meta.MediaStorageSOPInstanceUID = dup
        ds.save_as(p)
    vol = read_dicom_series(paths)
    files = write_dicom_series(vol.with_array(vol.array.copy(), StepRecord(name="t")), tmp_path / "out",
                               derivation="unit test", uid_key="k")
    assert len({pydicom.dcmread(f).SOPInstanceUID for f in files}) == 3

    a = make_dicom_series(tmp_path / "a", slices=2, size=16, seed=1, series_uid="1.2.3.4")
    b = make_dicom_series(tmp_path / "b", slices=2, size=24, seed=2, series_uid="1.2.3.4", start_z=50)
    series = set()
    for group, name in ((a, "oa"), (b, "ob")):
        v = read_dicom_series(group)
        out = write_dicom_series(v.with_array(v.array.copy(), StepRecord(name="t")), tmp_path / name,
                                 derivation="unit test", uid_key="k")
        series |= {pydicom.dcmread(f).SeriesInstanceUID for f in out}
    assert len(series) == 2


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


def test_derived_references_carry_a_purpose_and_the_site_uid_root(tmp_path):
    paths = make_dicom_series(tmp_path / "in", slices=2, size=8, seed=3)
    vol = read_dicom_series(paths)
    out = write_volume(vol.with_array(vol.array + 1, StepRecord(name="t")), tmp_path / "out", derivation="test",
                       uid_key="k" * 16, uid_root="1.2.826.0.1.3680043.10.999.")
    for f in out:
        ds = pydicom.dcmread(f)
        assert ds.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.999.")
        assert ds.SeriesInstanceUID.startswith("1.2.826.0.1.3680043.10.999.")
        purpose = ds.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")


def test_uid_root_is_validated_with_the_config(tiny_config):
    from medue.errors import InvalidConfigError
    from medue.pipeline.config import load_config

    with pytest.raises(InvalidConfigError, match="uid_root"):
        load_config(tiny_config(uid_root="1.2.abc"))
    assert load_config(tiny_config(uid_root="1.2.826.0.1.3680043.10.999.")).uid_root.endswith("999.")


def test_enhanced_multiframe_derivation_is_described_per_frame():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from medue.io.dicom_derive import _derive_enhanced

    src = Dataset()
    src.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR
    src.SOPInstanceUID = "1.2.3.4"
    src.SeriesInstanceUID, src.StudyInstanceUID = "1.2.3", "1.2"
    src.ImageType = ["ORIGINAL", "PRIMARY", "T1", "NONE"]
    src.PulseSequenceName = "SE"
    shared, frame_type = Dataset(), Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "T1", "NONE"]
    shared.MRImageFrameTypeSequence = Sequence([frame_type])
    old = Dataset()
    old.DerivationDescription = "inherited"
    shared.DerivationImageSequence = Sequence([old])
    src.SharedFunctionalGroupsSequence = Sequence([shared])
    src.PerFrameFunctionalGroupsSequence = Sequence([Dataset() for _ in range(3)])
    ds = __import__("copy").deepcopy(src)
    _derive_enhanced(ds, src, "medue salm")
    assert list(ds.ImageType) == ["DERIVED", "PRIMARY", "T1", "NONE"]  # value 2 stays PRIMARY in enhanced IODs
    assert ds.SharedFunctionalGroupsSequence[0].MRImageFrameTypeSequence[0].FrameType[0] == "DERIVED"
    assert "DerivationImageSequence" not in ds.SharedFunctionalGroupsSequence[0]
    assert "PulseSequenceName" not in ds  # required only while ORIGINAL
    evidence = ds.SourceImageEvidenceSequence[0]  # every referenced instance, by study and series
    assert evidence.StudyInstanceUID == "1.2" and evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.3"
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.3.4"
    for number, frame in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
        derived = frame.DerivationImageSequence[0]
        assert derived.DerivationCodeSequence[0].CodeValue == "113042"
        ref = derived.SourceImageSequence[0]
        assert (ref.ReferencedSOPInstanceUID, ref.ReferencedFrameNumber) == ("1.2.3.4", number)
        assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"


def test_enhanced_object_without_per_frame_groups_names_its_input_not_the_sources_source():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from medue.io.dicom_derive import _derive_enhanced

    src = Dataset()
    src.SOPClassUID, src.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4.1", "1.2.3.4"
    src.ImageType = ["DERIVED", "PRIMARY"]
    shared, inherited, ref = Dataset(), Dataset(), Dataset()
    ref.ReferencedSOPInstanceUID = "9.9.9"  # the source's own source: never an input of this release
    inherited.SourceImageSequence = Sequence([ref])
    shared.DerivationImageSequence = Sequence([inherited])
    src.SharedFunctionalGroupsSequence = Sequence([shared])
    ds = __import__("copy").deepcopy(src)
    _derive_enhanced(ds, src, "medue salm")
    derived = ds.SharedFunctionalGroupsSequence[0].DerivationImageSequence
    assert len(derived) == 1 and derived[0].DerivationDescription == "medue salm"
    assert [r.ReferencedSOPInstanceUID for r in derived[0].SourceImageSequence] == ["1.2.3.4"]


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
