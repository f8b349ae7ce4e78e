"""The derived DICOM series medue writes (medue.io.dicom_derive): UIDs, derivation attributes, references, the
enhanced (multi-frame) objects, and what a written file carries over from its source and what it must not."""

import numpy as np
import pydicom
import pytest

from medue.errors import ExportError
from medue.io import write_volume
from medue.io.dicom import read_dicom_series
from medue.io.dicom_derive import write_dicom_series
from medue.provenance import StepRecord
from medue.testing import make_dicom_series


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


def test_export_refuses_volume_without_sources(tmp_path):
    from medue.testing import make_volume

    with pytest.raises(ExportError, match="no DICOM source files"):
        write_dicom_series(make_volume(), tmp_path / "o", derivation="x")


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
