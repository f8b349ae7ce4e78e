"""Other ITK formats (MetaImage .mha/.mhd, NRRD) <-> Volume through SimpleITK. ITK space is already LPS."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medue.errors import ExportError, IngestError
from medue.io.paths import relative_label
from medue.io.atomic import atomic_file
from medue.provenance import StepRecord, sha256_file
from medue.volume import Geometry, SourceRef, Volume

SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")


def is_itk(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def _sitk():
    import SimpleITK as sitk

    return sitk


def read_itk(path: str | Path, *, root: Path | None = None) -> Volume:
    """Read a scalar integer image with SimpleITK; ``(z, y, x)`` array, LPS affine from origin/spacing/direction."""
    sitk = _sitk()
    path = Path(path)
    label = relative_label(path, root)
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
    if np.issubdtype(array.dtype, np.floating):
        reason = "nan_values" if np.isnan(array).any() else "unsupported"
        raise IngestError(f"{label}: floating-point pixels ({array.dtype}); medue needs stored integer units",
                          source=label, reason=reason)
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
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(src)
    for key in src.GetMetaDataKeys():
        img.SetMetaData(key, src.GetMetaData(key))
    path = Path(path)
    with atomic_file(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)  # zlib: lossless
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp)))
        if not np.array_equal(back, array):
            raise ExportError(f"{path.name}: re-read pixels differ from the protected array")
    return path

