"""The derived DICOM series medue writes from a protected Volume read by :mod:`medue.io.dicom`.

A *derived* series: new Series/SOP Instance UIDs, ImageType DERIVED\\SECONDARY, DerivationDescription,
SourceImageSequence and ContributingEquipmentSequence naming medue, with the source's SOP class, bit layout, rescale
and window. Output is always uncompressed Explicit VR Little Endian, so no lossy compression is ever introduced.
Enhanced (functional-group) objects are derived per PS3.3 C.7.6.16: Image Type value 2 stays PRIMARY, Frame Type
value 1 becomes DERIVED, and each frame gets a Derivation Image functional group (:func:`_derive_enhanced`).

What is delegated: UIDs to ``pydicom.uid.generate_uid``. What is not: highdicom builds *new* objects (SEG, SR,
Secondary Capture, legacy-converted enhanced images) from pixel arrays and a few source attributes; a protected
release must instead be the source instance itself with only its pixels and derivation attributes changed (every
acquisition, geometry, window and private attribute kept), which highdicom has no API for, so the derivation is
done here on a copy of the source dataset and checked with dciodvfy in the tests (``tests/io/test_conformance.py``).
"""

from __future__ import annotations

import copy
import datetime as _dt
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medue.errors import ExportError
from medue.io import basic_profile
from medue.io.atomic import atomic_folder
from medue.io.dicom import take_headers
from medue.volume import Volume

#: Root under which medue makes UIDs (pydicom's registered prefix; a site may pass its own org root).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."
#: medue's Implementation Class UID (file meta), a fixed UUID-derived UID: the writer of a derived file is medue.
MEDUE_IMPLEMENTATION_UID = "2.25.194806727364066102395236357307347516577"
#: DerivationCodeSequence of a medue output (PS3.16 CID 7203 Image Derivation): the perturbation is added to the
#: stored pixels; DerivationDescription says which method, budget and key fingerprint.
DERIVATION_CODE = ("113042", "DCM", "Pixel by pixel addition")
#: PurposeOfReferenceCodeSequence of each source reference (PS3.16 CID 7202 Source Image Purposes of Reference).
SOURCE_PURPOSE_CODE = ("121322", "DCM", "Source image for image processing operation")


def derived_uid(key: str | None, original: str, purpose: str, root: str | None = None) -> str:
    """New UID for ``original``: random without a key, else deterministic from (key, purpose, original).

    Keyed remapping makes re-runs reproduce the same UIDs, so references between releases stay consistent.
    ``root`` is the site's own UID root (config ``uid_root``); without one, pydicom's root is used.
    """
    prefix = root or UID_PREFIX
    if key is None:
        return generate_uid(prefix=prefix)
    return generate_uid(prefix=prefix, entropy_srcs=[key, purpose, original])


def _code(value: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value
    return item


def _source_reference(src: Dataset, frame: int | None = None) -> Dataset:
    """A SourceImageSequence item: the source instance (and frame), with its purpose of reference."""
    ref = Dataset()
    ref.ReferencedSOPClassUID = src.SOPClassUID
    ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
    if frame is not None:
        ref.ReferencedFrameNumber = frame
    ref.PurposeOfReferenceCodeSequence = DicomSequence([_code(SOURCE_PURPOSE_CODE)])
    return ref


#: Enhanced (functional-group) multi-frame image storage classes.
ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2",  # Enhanced / Legacy Converted Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.3", "1.2.840.10008.5.1.4.1.1.4.4",  # MR
    "1.2.840.10008.5.1.4.1.1.128.1", "1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.128.2",  # PET
    "1.2.840.10008.5.1.4.1.1.12.1.1", "1.2.840.10008.5.1.4.1.1.12.2.1",  # Enhanced XA / XRF
    "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume
}
#: Attributes of enhanced MR/CT objects that PS3.3 requires only while Image Type value 1 is ORIGINAL or MIXED
#: (MR Pulse Sequence module, C.8.13.4, and Bulk Motion Synchronization); dciodvfy reports them as an error in a
#: DERIVED image, so a derived copy drops them (they describe the acquisition of the source, which it references).
ORIGINAL_ONLY_ATTRIBUTES = (
    "PulseSequenceName", "MRAcquisitionType", "EchoPulseSequence", "MultipleSpinEcho", "MultiPlanarExcitation",
    "PhaseContrast", "TimeOfFlightContrast", "Spoiling", "SteadyStatePulseSequence", "EchoPlanarPulseSequence",
    "SaturationRecovery", "SpectrallySelectedSuppression", "OversamplingPhase", "GeometryOfKSpaceTraversal",
    "RectilinearPhaseEncodeReordering", "SegmentedKSpaceTraversal", "CoverageOfKSpace",
    "NumberOfKSpaceTrajectories", "BulkMotionCompensationTechnique",
)


def is_enhanced(ds: Dataset) -> bool:
    """An enhanced (multi-frame functional group) IOD: derivation is described per frame, not at the top level."""
    return (str(ds.get("SOPClassUID", "")) in ENHANCED_SOP_CLASSES or "PerFrameFunctionalGroupsSequence" in ds
            or "SharedFunctionalGroupsSequence" in ds)


def _derive_enhanced(ds: Dataset, src: Dataset, derivation: str) -> None:
    """PS3.3 C.7.6.16 for an enhanced multi-frame object: Image Type value 1 DERIVED (value 2 stays PRIMARY, the
    only value these IODs allow), every Frame Type value 1 DERIVED, and a per-frame Derivation Image functional
    group naming this derivation and the source frame (where the object has per-frame functional groups; an
    object without them keeps only the Contributing Equipment record of the change)."""
    image_type = list(src.get("ImageType", ["ORIGINAL", "PRIMARY"]))
    ds.ImageType = ["DERIVED", *image_type[1:]] if len(image_type) > 1 else ["DERIVED", "PRIMARY"]
    for keyword in ORIGINAL_ONLY_ATTRIBUTES:
        if keyword in ds:
            del ds[keyword]
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in ds.get(group, []):
            for elem in item:
                if elem.VR == "SQ" and elem.keyword.endswith("FrameTypeSequence"):
                    for ft in elem.value:
                        if "FrameType" in ft:
                            values = list(ft.FrameType)
                            ft.FrameType = ["DERIVED", *values[1:]]
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    if frames is None:
        # no per-frame groups: a Derivation Image group the source shares over its frames names the source's own
        # sources, instances this release never had; the copy's shared group names this derivation instead
        for shared in ds.get("SharedFunctionalGroupsSequence", []):
            if "DerivationImageSequence" in shared:
                derived = Dataset()
                derived.DerivationDescription = derivation[:1024]
                derived.DerivationCodeSequence = DicomSequence([_code(DERIVATION_CODE)])
                derived.SourceImageSequence = DicomSequence([_source_reference(src)])
                shared.DerivationImageSequence = DicomSequence([derived])
        return
    # Source Image Evidence Sequence (C.8.13.1, required once frames carry a Derivation Image group with
    # Image Type DERIVED): every instance the derivation references, as a hierarchical SOP instance reference
    sop, series, study = Dataset(), Dataset(), Dataset()
    sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
    series.SeriesInstanceUID = src.SeriesInstanceUID
    series.ReferencedSOPSequence = DicomSequence([sop])
    study.StudyInstanceUID = src.StudyInstanceUID
    study.ReferencedSeriesSequence = DicomSequence([series])
    ds.SourceImageEvidenceSequence = DicomSequence([study])
    for shared in ds.get("SharedFunctionalGroupsSequence", []):
        if "DerivationImageSequence" in shared:
            del shared.DerivationImageSequence  # described per frame below
    for number, item in enumerate(frames, start=1):
        derived = Dataset()
        derived.DerivationDescription = derivation[:1024]
        derived.DerivationCodeSequence = DicomSequence([_code(DERIVATION_CODE)])
        derived.SourceImageSequence = DicomSequence([_source_reference(src, number)])
        item.DerivationImageSequence = DicomSequence([derived])


def _equipment_item(version: str, description: str, now: _dt.datetime) -> Dataset:
    code = Dataset()
    code.CodeValue = "109103"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Modifying Equipment"
    item = Dataset()
    item.Manufacturer = "medue"
    item.ManufacturerModelName = "medue"
    item.SoftwareVersions = version
    item.ContributionDateTime = now.strftime("%Y%m%d%H%M%S")
    item.ContributionDescription = description[:64]
    item.PurposeOfReferenceCodeSequence = DicomSequence([code])
    return item


def write_dicom_series(
    volume: Volume,
    out_dir: str | Path,
    *,
    derivation: str,
    uid_key: str | None = None,
    uid_root: str | None = None,
    keep_descriptions: bool = False,
    keep_private_creators: Sequence[str] = (),
    unchanged: bool = False,
) -> list[Path]:
    """Write ``volume`` as a derived copy of its source series into ``out_dir`` (atomically) and verify it.

    Args:
        volume: A volume read by :func:`read_dicom_series` (its header names the source files).
        out_dir: Folder that will hold ``slice_0000.dcm``…; replaced as a whole in one rename.
        derivation: Text for DerivationDescription (what was done, method, budget).
        uid_key: Secret for deterministic UID remapping; ``None`` makes random UIDs.
        uid_root: The site's DICOM UID root for the new UIDs (``None``: pydicom's).
        keep_descriptions: Keep the source's descriptions (the Basic Profile removes them:
            :mod:`medue.io.basic_profile`).
        keep_private_creators: Private blocks kept (by creator); every other private attribute is removed.
        unchanged: The volume carries no perturbation on purpose (a blank class): SeriesDescription says so.

    Returns:
        The written files, in slice order.

    Raises:
        ExportError: when the source files are gone, or the re-read output differs from what was written.
    """
    from medue._version import __version__

    files = [Path(p) for p in volume.header.get("dicom_files", [])]
    if not files:
        raise ExportError("volume has no DICOM source files to derive from; export it as NIfTI instead")
    now = _dt.datetime.now(_dt.timezone.utc)
    # the headers as they were read (and hashed); the pixels come from the volume
    sources = take_headers(files, volume.source.sha256)
    if sources is None:
        try:
            sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise ExportError(f"the source series is no longer readable ({type(exc).__name__}); a derived copy "
                              "takes its header from the source: read the series again") from exc
    # one new series per exported volume: a source series split into two volumes gets two new series
    members = "|".join(sorted(str(src.get("SOPInstanceUID", "")) for src in sources))
    new_series = derived_uid(uid_key, f"{sources[0].get('SeriesInstanceUID', '')}|{members}", "series", uid_root)
    out_dir = Path(out_dir)
    written: list[Path] = []
    expected: list[bytes] = []
    with atomic_folder(out_dir) as tmp:
        for i, src in enumerate(sources):
            ds = _derive_dataset(src, i, volume, new_series, derivation, uid_key, __version__, now, uid_root,
                                 keep_descriptions=keep_descriptions, keep_private_creators=keep_private_creators,
                                 unchanged=unchanged)
            pixels = volume.array if volume.header.get("multiframe") else volume.array[i]
            data = np.ascontiguousarray(pixels, dtype=volume.array.dtype.newbyteorder("<")).tobytes()
            ds.PixelData = data
            ds["PixelData"].VR = "OB" if int(src.BitsAllocated) <= 8 else "OW"
            ds["PixelData"].is_undefined_length = False
            for tag in ("SmallestImagePixelValue", "LargestImagePixelValue"):
                if tag in ds:
                    del ds[tag]
            name = f"slice_{i:04d}.dcm"
            ds.save_as(tmp / name, enforce_file_format=True)
            written.append(out_dir / name)
            expected.append(data)
        verify_dicom_series(sorted(tmp.iterdir()), sources, expected, new_series)
    return written


def _derive_dataset(src: Dataset, index: int, volume: Volume, new_series: str, derivation: str,
                    uid_key: str | None, version: str, now: _dt.datetime, uid_root: str | None = None, *,
                    keep_descriptions: bool = False, keep_private_creators: Sequence[str] = (),
                    unchanged: bool = False) -> Dataset:
    ds = copy.deepcopy(src)  # file meta included: a shallow copy would share (and rewrite) the source's elements
    basic_profile.clean(ds, keep_descriptions=keep_descriptions, keep_private_creators=keep_private_creators)
    old_sop = str(src.SOPInstanceUID)
    # each instance its own new UID, even where the source repeats one (index and new series in the seed)
    new_sop = derived_uid(uid_key, f"{old_sop}|{index}|{new_series}", "instance", uid_root)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # big-endian and implicit-VR sources are written as Explicit VR Little Endian: decode every raw element with
    # the source's own encoding first (an Explicit VR Little Endian source's raw elements are written as they are)
    if tuple(src.original_encoding) != (False, True):
        for _ in ds.iterall():
            pass
    ds.set_original_encoding(False, True, getattr(src, "original_character_set", None))
    ds.file_meta.MediaStorageSOPInstanceUID = new_sop
    ds.file_meta.MediaStorageSOPClassUID = src.SOPClassUID
    ds.file_meta.ImplementationClassUID = MEDUE_IMPLEMENTATION_UID  # the writer is medue, not the source's writer
    ds.file_meta.ImplementationVersionName = f"MEDUE_{version}"[:16]
    if "SourceApplicationEntityTitle" in ds.file_meta:
        del ds.file_meta.SourceApplicationEntityTitle
    if "IconImageSequence" in ds:  # a thumbnail of the unprotected image (and maybe encapsulated): drop it
        del ds.IconImageSequence
    ds.SOPInstanceUID = new_sop
    ds.SeriesInstanceUID = new_series
    if is_enhanced(src):
        for tag in ("DerivationCodeSequence", "SourceImageSequence", "DerivationDescription"):
            if tag in ds:  # not part of enhanced IODs at the top level: the derivation is described per frame
                del ds[tag]
        _derive_enhanced(ds, src, derivation)
    else:
        ds.DerivationCodeSequence = DicomSequence([_code(DERIVATION_CODE)])  # this derivation, not the source's
        image_type = list(src.get("ImageType", ["ORIGINAL", "PRIMARY"]))
        while len(image_type) < 2:
            image_type.append("")
        ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
        ds.DerivationDescription = derivation[:1024]
        ds.SourceImageSequence = DicomSequence([_source_reference(src)])
    equipment = list(src.get("ContributingEquipmentSequence", []))
    equipment.append(_equipment_item(version, "unlearnable-example perturbation", now))
    ds.ContributingEquipmentSequence = DicomSequence(equipment)
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    desc = str(src.get("SeriesDescription", "")) if keep_descriptions else ""
    mark = "UNCHANGED (medue: class left blank)" if unchanged else "PROTECTED (medue)"
    ds.SeriesDescription = (mark + " " + desc).strip()[:64]
    if "LossyImageCompression" not in src and src.file_meta.TransferSyntaxUID.is_compressed:
        ds.LossyImageCompression = "00"
    return ds


def verify_dicom_series(written: Sequence[Path], sources: Sequence[Dataset], expected: Sequence[bytes],
                        series_uid: str) -> None:
    """Re-read written files and check pixels, UIDs and the derived-image tags; raise ExportError on any miss.

    ``expected``: each file's protected pixels as the little-endian bytes that were written.
    """
    problems = []
    for path, src, want in zip(written, sources, expected):
        ds = pydicom.dcmread(path)
        # uncompressed, little endian, and the pixel module is checked against the source below: the bytes on disk
        # equal to the array's bytes (plus the one pad byte of an odd length) mean the same decoded pixels
        data = ds.get("PixelData")
        if data is None or len(data) not in (len(want), len(want) + 1) or data[:len(want)] != want:
            problems.append(f"{path.name}: pixels differ from the protected array")
        if ds.SOPInstanceUID != ds.file_meta.MediaStorageSOPInstanceUID or ds.SOPInstanceUID == src.SOPInstanceUID:
            problems.append(f"{path.name}: SOP Instance UID not new or not equal to the file meta")
        if ds.SeriesInstanceUID != series_uid:
            problems.append(f"{path.name}: Series Instance UID not the new one")
        if ds.SOPClassUID != src.SOPClassUID:
            problems.append(f"{path.name}: SOP class changed")
        if list(ds.ImageType)[:1] != ["DERIVED"] or (not is_enhanced(src) and list(ds.ImageType)[1] != "SECONDARY"):
            problems.append(f"{path.name}: ImageType is {list(ds.ImageType)}")
        for tag in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "Rows", "Columns",
                    "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
            if src.get(tag) != ds.get(tag):
                problems.append(f"{path.name}: {tag} {ds.get(tag)!r} != source {src.get(tag)!r}")
        if ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
            problems.append(f"{path.name}: transfer syntax {ds.file_meta.TransferSyntaxUID.name}")
    if problems:
        raise ExportError("DICOM verification failed: " + "; ".join(problems))
