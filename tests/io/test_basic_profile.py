"""The PS3.15 Basic Profile as data (medue.io.basic_profile): what refuses an instance, what a derived copy loses."""

from pydicom.dataset import Dataset

from medue.io.basic_profile import RETAIN_OPTIONS, TABLE, clean, policy_words, violations
from medue.testing import add_descriptions_and_private_blocks


def _dataset() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Anon^0001"  # a pseudonym: the profile's Z/D let it hold a dummy value
    ds.PatientID = "ANON0001"
    ds.StudyID = "1"
    ds.InstitutionName = "St Elsewhere"
    ds.StationName = "CT01"
    ds.OperatorsName = "Smith^Jane"
    ds.Modality = "CT"
    return add_descriptions_and_private_blocks(ds)


def test_identifying_institution_and_device_values_refuse_unless_retained():
    ds = _dataset()
    assert violations(ds) == ["OperatorsName", "InstitutionName", "StationName"]
    assert violations(ds, ("institution_identity", "device_identity")) == ["OperatorsName"]
    assert not {"PatientName", "PatientID", "StudyID"} & set(TABLE)  # pseudonyms, not checked
    ds.OperatorsName = ""
    assert violations(ds, tuple(RETAIN_OPTIONS)) == []  # an emptied attribute is what the profile asks


def test_a_derived_copy_loses_descriptors_and_private_blocks_but_a_listed_creators():
    ds = _dataset()
    removed = clean(ds, keep_private_creators=["SITE KEEP"])
    assert "StudyDescription" in removed and "ImageComments" in removed
    assert "private (0011,10) ACME 1.1" in removed and not any("SITE KEEP" in r for r in removed)
    assert "StudyDescription" not in ds and "Jane Doe" not in str(ds) and "calibration" in str(ds)
    assert ds.Modality == "CT" and ds.PatientName == "Anon^0001"  # clinical content and pseudonyms stay
    kept = _dataset()
    clean(kept, keep_descriptions=True)
    assert kept.StudyDescription == "MRI head of J. Doe" and "calibration" not in str(kept)


def test_the_policy_row_names_the_profile_the_options_and_the_uids():
    text = policy_words(keep_descriptions=False, keep_private_creators=["SITE KEEP"], retain=["device_identity"])
    assert "Basic Application Level Confidentiality Profile" in text and f"{len(TABLE)} attributes" in text
    assert "Clean Descriptors" in text and "except those of SITE KEEP" in text
    assert "Retain Device Identity Option" in text and "Frame of Reference UID kept" in text
