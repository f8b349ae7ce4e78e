"""What a released DICOM instance may carry: the PS3.15 Basic Application Level Confidentiality Profile as data.

medue is not a de-identifier: the site's de-identifier runs first (PatientIdentityRemoved YES). medue checks its work
against this table, attribute by attribute, and cleans what a derived copy must not carry:

* ``identifying`` rows (Basic Profile action X or Z for names, addresses, telephone numbers, other IDs, physicians,
  operators, accession numbers, comments about the patient): a value refuses the instance under
  ``deidentification: refuse`` (the site's de-identifier missed it), naming the attributes, never their values;
* ``institution`` and ``device`` rows (X/Z/D, kept by the Retain Institution Identity and Retain Device Identity
  options): refused likewise unless the site retains them (``deidentification_options.retain``);
* ``descriptor`` rows (free text the profile removes, or cleans with the Clean Descriptors option): removed from
  every derived copy, unless ``deidentification_options.keep_descriptions`` is set (the site vouches for them);
* private attributes: removed from every derived copy, unless their creator is listed in
  ``deidentification_options.keep_private_creators``;
* dates and times other than the birth date (Retain Longitudinal Temporal Information) and patient
  characteristics (sex, age, size, weight: Retain Patient Characteristics) are kept as the site's de-identifier left them (a dummy value satisfies the
  profile's Z/D actions, so a value proves nothing); the report says so;
* UIDs (action U): the derived copy gets new Series and SOP Instance UIDs; Study Instance UID and Frame of Reference
  UID are kept, so the copy stays in its study and its geometry (the site's de-identifier replaced them).

The table is the part of PS3.15 Table E.1-1 that image objects carry (keyword, action), not all of it; the actions
are the profile's own (first of several when it lists several).
"""

from __future__ import annotations

from typing import Iterable

from pydicom.dataset import Dataset

PROFILE_NAME = "DICOM PS3.15 Basic Application Level Confidentiality Profile"

#: keyword -> (Basic Profile action, group); see the module docstring for what each group means here.
TABLE: dict[str, tuple[str, str]] = {
    # identifying: a value means the site's de-identifier missed it
    "PatientBirthDate": ("Z", "identifying"), "PatientBirthTime": ("X", "identifying"),
    "PatientAddress": ("X", "identifying"),
    "PatientTelephoneNumbers": ("X", "identifying"), "OtherPatientIDs": ("X", "identifying"),
    "OtherPatientNames": ("X", "identifying"), "OtherPatientIDsSequence": ("X", "identifying"),
    "PatientBirthName": ("X", "identifying"), "PatientMotherBirthName": ("X", "identifying"),
    "MedicalRecordLocator": ("X", "identifying"), "PatientInsurancePlanCodeSequence": ("X", "identifying"),
    "MilitaryRank": ("X", "identifying"), "BranchOfService": ("X", "identifying"),
    "CountryOfResidence": ("X", "identifying"), "RegionOfResidence": ("X", "identifying"),
    "PatientReligiousPreference": ("X", "identifying"), "IssuerOfPatientID": ("X", "identifying"),
    "AdmissionID": ("X", "identifying"), "CurrentPatientLocation": ("X", "identifying"),
    "ReferringPhysicianName": ("Z", "identifying"), "ReferringPhysicianAddress": ("X", "identifying"),
    "ReferringPhysicianTelephoneNumbers": ("X", "identifying"), "PerformingPhysicianName": ("X", "identifying"),
    "NameOfPhysiciansReadingStudy": ("X", "identifying"), "OperatorsName": ("X", "identifying"),
    "PhysiciansOfRecord": ("X", "identifying"), "RequestingPhysician": ("X", "identifying"),
    "ResponsiblePerson": ("Z", "identifying"), "ResponsibleOrganization": ("X", "identifying"),
    "AccessionNumber": ("Z", "identifying"),
    "PerformedProcedureStepID": ("X", "identifying"), "RequestAttributesSequence": ("X", "identifying"),
    "MedicalAlerts": ("X", "identifying"), "Allergies": ("X", "identifying"),
    "PersonName": ("D", "identifying"), "VerifyingObserverName": ("D", "identifying"),
    # institution and device: kept only with the Retain Institution / Device Identity options
    "InstitutionName": ("X", "institution"), "InstitutionAddress": ("X", "institution"),
    "InstitutionalDepartmentName": ("X", "institution"), "StationName": ("X", "device"),
    "DeviceSerialNumber": ("X", "device"), "DetectorID": ("X", "device"), "PlateID": ("X", "device"),
    "GantryID": ("X", "device"), "CassetteID": ("X", "device"),
    # descriptors: free text, removed from every derived copy unless the site keeps them
    "StudyDescription": ("X", "descriptor"), "SeriesDescription": ("X", "descriptor"),
    "ProtocolName": ("X", "descriptor"), "PerformedProcedureStepDescription": ("X", "descriptor"),
    "RequestedProcedureDescription": ("X", "descriptor"), "ScheduledProcedureStepDescription": ("X", "descriptor"),
    "AdmittingDiagnosesDescription": ("X", "descriptor"), "AdditionalPatientHistory": ("X", "descriptor"),
    "PatientComments": ("X", "descriptor"), "ImageComments": ("X", "descriptor"),
    "StudyComments": ("X", "descriptor"), "ReasonForStudy": ("X", "descriptor"),
    "RequestedContrastAgent": ("X", "descriptor"), "AcquisitionComments": ("X", "descriptor"),
    "FrameComments": ("X", "descriptor"), "InterpretationText": ("X", "descriptor"),
    "PatientState": ("X", "descriptor"), "Occupation": ("X", "descriptor"),
    "DerivationDescription": ("X", "descriptor"),
    "SeriesDescriptionCodeSequence": ("X", "descriptor"), "ProcedureCodeSequence": ("X", "descriptor"),
}

#: What ``deidentification_options.retain`` may name, and the Basic Profile option it stands for.
RETAIN_OPTIONS = {"institution_identity": ("institution", "Retain Institution Identity Option"),
                  "device_identity": ("device", "Retain Device Identity Option")}


def _has_value(ds: Dataset, keyword: str) -> bool:
    value = ds.get(keyword)
    return value is not None and str(value).strip() not in ("", "[]", "Sequence of 0 items", "None")


def violations(ds: Dataset, retain: Iterable[str] = ()) -> list[str]:
    """Keywords of ``identifying`` rows (and ``institution``/``device`` rows the site does not retain) that ``ds``
    carries with a value: what refuses an instance under ``deidentification: refuse`` (values are never shown)."""
    kept = {RETAIN_OPTIONS[r][0] for r in retain if r in RETAIN_OPTIONS}
    refused = {"identifying", "institution", "device"} - kept
    return [k for k, (_, group) in TABLE.items() if group in refused and _has_value(ds, k)]


def clean(ds: Dataset, *, keep_descriptions: bool = False, keep_private_creators: Iterable[str] = ()) -> list[str]:
    """Remove from ``ds`` (a derived copy, in place) the descriptors and the private attributes the profile removes;
    returns what was removed (keywords, and ``private (gggg,xx) CREATOR`` blocks)."""
    removed = []
    if not keep_descriptions:
        for keyword, (_, group) in TABLE.items():
            if group == "descriptor" and keyword in ds:
                del ds[keyword]
                removed.append(keyword)
    keep = {str(c).strip() for c in keep_private_creators}
    creators: dict[tuple[int, int], str] = {}
    for elem in ds:
        tag = elem.tag
        if tag.is_private and 0x0010 <= tag.element <= 0x00FF:
            creators[(tag.group, tag.element)] = str(elem.value).strip()
    for elem in list(ds):
        tag = elem.tag
        if not tag.is_private:
            continue
        block = (tag.group, tag.element if tag.element <= 0x00FF else tag.element >> 8)
        creator = creators.get(block, "")
        if creator and creator in keep:
            continue
        del ds[tag]
        name = f"private ({tag.group:04X},{block[1]:02X}) {creator or '(no creator)'}"
        if name not in removed:
            removed.append(name)
    return removed


def policy_words(*, keep_descriptions: bool, keep_private_creators: Iterable[str], retain: Iterable[str]) -> str:
    """The profile and options a release applied, in one sentence for the report's policy row."""
    options = ["Clean Descriptors (removed from every derived copy)" if not keep_descriptions
               else "descriptors kept (deidentification_options.keep_descriptions: the site vouches for them)"]
    creators = list(keep_private_creators)
    options.append("private attributes removed" + (f" except those of {', '.join(creators)}" if creators else ""))
    options += [RETAIN_OPTIONS[r][1] for r in retain if r in RETAIN_OPTIONS]
    options.append("PatientName, PatientID and StudyID kept as the site's de-identifier set them (its pseudonyms: "
                   "the profile lets Z/D attributes hold a dummy value, so medue cannot tell one from a real one)")
    options.append("dates and patient characteristics kept as the site's de-identifier left them")
    return (f"{PROFILE_NAME} ({len(TABLE)} attributes checked): {'; '.join(options)}. UIDs: Study Instance UID and "
            "Frame of Reference UID kept (the derived series stays in its study and geometry; the site's "
            "de-identifier replaced them), Series and SOP Instance UIDs new, the source SOP Instance UIDs referenced "
            "in SourceImageSequence")


__all__ = ["PROFILE_NAME", "RETAIN_OPTIONS", "TABLE", "clean", "policy_words", "violations"]
