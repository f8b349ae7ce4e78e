"""Other ITK formats (MetaImage .mha/.mhd, NRRD) <-> Volume through SimpleITK. ITK space is already LPS."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medue.errors import ExportError, IngestError
from medue.io.paths import relative_label
from medue.io.atomic import atomic_file
from medue.io.units import float_header, float_to_units, units_to_float_exact
from medue.provenance import StepRecord, sha256_file
from medue.volume import Geometry, SourceRef, Volume

SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")


def is_itk(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


METAIMAGE_TYPES = {f"MET_{t}" for t in ("CHAR", "UCHAR", "SHORT", "USHORT", "INT", "UINT", "LONG", "ULONG",
                                         "LONG_LONG", "ULONG_LONG", "FLOAT", "DOUBLE")}
MAX_DIMS = 4


def _numbers(value: str) -> list[float] | None:
    try:
        return [float(v) for v in value.split()]
    except ValueError:
        return None


def check_text_header(path: Path, label: str) -> None:
    """Check a MetaImage (.mha/.mhd) or NRRD header in Python before any C++ reader parses it.

    SimpleITK crashes the whole process (segmentation fault) on some headers, e.g. ``NDims = 99999999``, so a
    hostile header must be refused here: dimensions 1 to 4, one positive whole size per dimension, finite
    positive spacings, a finite origin and a known MetaImage element type.
    """
    with open(path, "rb") as fh:
        head = fh.read(65536)
    nrrd = head.startswith(b"NRRD")
    fields: dict[str, str] = {}
    for raw in head.split(b"\n")[1 if nrrd else 0:]:
        line = raw.decode("latin-1").strip()
        if nrrd and (not line or line.startswith("#")):
            if not line:
                break
            continue
        sep = ":" if nrrd else "="
        if not nrrd and not line:
            continue  # a blank line inside a MetaImage header (ITK writes one after an unprintable value)
        if sep not in line:
            if nrrd:
                continue
            break
        key, value = line.split(sep, 1)
        key = key.strip().lower()
        fields[key] = value.strip().lstrip("=").strip()
        if not nrrd and key == "elementdatafile":
            break
    problems = []

    def expect(cond: bool, what: str) -> None:
        if not cond:
            problems.append(what)

    ndims_key, size_key = ("dimension", "sizes") if nrrd else ("ndims", "dimsize")
    ndims = fields.get(ndims_key, "")
    expect(ndims.isdigit() and 1 <= int(ndims) <= MAX_DIMS, f"{ndims_key} {ndims[:20]!r} (expected 1 to {MAX_DIMS})")
    sizes = _numbers(fields.get(size_key, ""))
    expect(sizes is not None and len(sizes) >= 1 and all(v >= 1 and v == int(v) for v in sizes),
           f"{size_key} {fields.get(size_key, '')[:40]!r} (expected positive whole numbers)")
    spacing_key = "spacings" if nrrd else "elementspacing"
    if spacing_key in fields:
        sp = _numbers(fields[spacing_key])
        expect(bool(sp) and all(np.isfinite(v) and v > 0 for v in sp),
               f"{spacing_key} {fields[spacing_key][:40]!r} (expected finite positive numbers)")
    for key in (("space origin",) if nrrd else ("offset", "origin", "position")):
        if key in fields:
            values = _numbers(fields[key].replace("(", " ").replace(")", " ").replace(",", " "))
            expect(bool(values) and all(np.isfinite(v) for v in values),
                   f"{key} {fields[key][:40]!r} (expected finite numbers)")
    if not nrrd:
        expect(fields.get("elementtype", "") in METAIMAGE_TYPES,
               f"ElementType {fields.get('elementtype', '')[:20]!r} (expected one of MET_SHORT, MET_USHORT, ...)")
    if problems:
        raise IngestError(f"{label}: {'NRRD' if nrrd else 'MetaImage'} header not usable: {'; '.join(problems)}; "
                          "re-export the image from its source", source=label, reason="bad_header")


def _sitk():
    import SimpleITK as sitk

    return sitk


def read_itk(path: str | Path, *, root: Path | None = None, float_unit: float | None = None) -> Volume:
    """Read a scalar image with SimpleITK; ``(z, y, x)`` array, LPS affine from origin/spacing/direction.

    Integer pixels are the stored units. Floating-point pixels are read with ``float_unit`` (``protect.unit``) as
    whole multiples of it, only when every pixel is one bit for bit (:func:`medue.io.units.float_to_units`);
    :func:`write_itk` writes them back in their own float type."""
    sitk = _sitk()
    path = Path(path)
    label = relative_label(path, root)
    check_text_header(path, label)  # every ITK suffix medue reads is a MetaImage or NRRD text header
    try:
        info = sitk.ImageFileReader()
        info.SetFileName(str(path))
        info.ReadImageInformation()  # the header only: refuse absurd declared sizes before allocating
        from medue.io.dicom import check_declared_size

        check_declared_size(int(np.prod(info.GetSize(), dtype=np.int64)) * info.GetNumberOfComponents()
                            * np.dtype(sitk.GetArrayViewFromImage(sitk.Image(1, 1, info.GetPixelID())).dtype).itemsize
                            if info.GetPixelID() >= 0 else 0, label)
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise IngestError(f"{label}: not readable by SimpleITK ({str(exc).strip().splitlines()[-1]})",
                          source=label, reason="truncated") from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise IngestError(f"{label}: vector/colour image; only scalar images are supported", source=label,
                          reason="unsupported")
    array = sitk.GetArrayFromImage(img)
    float_dtype = None
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise IngestError(f"{label}: {int((~np.isfinite(array)).sum())} NaN or infinite voxels; fix or mask "
                              "them before release", source=label, reason="nan_values")
        if float_unit is None:
            raise IngestError(f"{label}: floating-point pixels ({array.dtype}); medue perturbs whole units, so set "
                              "protect.unit to the step of the image's values (1 for CT in float HU) or convert the "
                              "image to integers", source=label, reason="unsupported")
        float_dtype = array.dtype
        array = float_to_units(array, float_unit, label)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise IngestError(f"{label}: {array.ndim}D image; expected 3D", source=label, reason="unsupported")
    dim = img.GetDimension()
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(dim, dim)
    affine = np.eye(4)
    affine[:dim, :dim] = direction * np.asarray(img.GetSpacing())[None, :]
    affine[:dim, 3] = img.GetOrigin()
    info = np.iinfo(array.dtype)
    header = {
        "rescale_slope": 1.0,
        "rescale_intercept": 0.0,
        "valid_range": (int(info.min), int(info.max)),
        "itk_file": str(path),
    }
    if float_dtype is not None:
        header.update(float_header(float_dtype, float_unit), rescale_slope=float(float_unit))
    source = SourceRef(paths=(label,), sha256=(sha256_file(path),), format="itk")
    vol = Volume(array=np.ascontiguousarray(array), geometry=Geometry(affine=affine), modality="OT",
                 source=source, header=header)
    return vol.with_step(StepRecord(name="read:itk", params={"simpleitk": sitk.Version_VersionString()},
                                    output_fingerprint=vol.fingerprint))


def write_itk(volume: Volume, path: str | Path) -> Path:
    """Write with the source's geometry and metadata (no lossy compression), then re-read and verify pixels."""
    sitk = _sitk()
    src_path = Path(volume.header.get("itk_file", ""))
    if not src_path.is_file():
        raise ExportError(f"source image {src_path.name or '(none)'} is not available to copy geometry from")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(src_path))
    src = reader.Execute()
    array = volume.array if src.GetDimension() == 3 else volume.array[0]
    unit = volume.header.get("float_unit")
    if unit is not None:  # whole units of a float image: back to its own float type, exactly
        array = units_to_float_exact(array, unit, np.dtype(volume.header["float_dtype"]))
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(src)
    for key in src.GetMetaDataKeys():
        if key.startswith("ITK_"):  # ITK's bookkeeping (unprintable values write blank header lines), not the source's
            continue
        img.SetMetaData(key, src.GetMetaData(key))
    path = Path(path)
    with atomic_file(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)  # zlib: lossless
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp)))
        if not np.array_equal(back, array):
            raise ExportError(f"{path.name}: re-read pixels differ from the protected array")
    return path

