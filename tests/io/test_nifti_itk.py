import gzip

import nibabel as nib
import numpy as np
import pytest

from medue.errors import IngestError
from medue.io import discover_inputs, read_item, write_volume
from medue.io.nifti import read_nifti, write_nifti
from medue.provenance import StepRecord
from medue.testing import make_nifti


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_nifti_roundtrip_changes_only_perturbed_voxels(tmp_path, name):
    src = make_nifti(tmp_path / name, slope=2.0, inter=-10.0)
    vol = read_nifti(src)
    assert vol.rescale == (2.0, -10.0) and vol.array.dtype == np.int16
    arr = vol.array.copy()
    arr[1, 3, 4] += 5
    out = write_nifti(vol.with_array(arr, StepRecord(name="t")), tmp_path / ("o_" + name))
    a, b = nib.load(str(src)), nib.load(str(out))
    raw_a, raw_b = np.asanyarray(a.dataobj.get_unscaled()), np.asanyarray(b.dataobj.get_unscaled())
    assert raw_b.dtype == raw_a.dtype
    assert np.argwhere(raw_a != raw_b).tolist() == [[4, 3, 1]]  # (x, y, z) of the one changed voxel
    assert (b.dataobj.slope, b.dataobj.inter) == (2.0, -10.0)
    for field in ("qform_code", "sform_code", "srow_x", "srow_y", "srow_z", "pixdim"):
        assert np.array_equal(a.header[field], b.header[field])
    opener = gzip.open if name.endswith(".gz") else open
    with opener(src, "rb") as f1, opener(out, "rb") as f2:
        assert f1.read(348) == f2.read(348)  # header bytes verbatim
    assert np.allclose(read_nifti(out).geometry.affine, vol.geometry.affine)


def test_nifti_lps_affine():
    import tempfile
    from pathlib import Path

    p = make_nifti(Path(tempfile.mkdtemp()) / "a.nii")
    vol = read_nifti(p)
    ras = nib.load(str(p)).affine
    assert np.allclose(vol.geometry.affine[:2], -ras[:2]) and np.allclose(vol.geometry.affine[2:], ras[2:])


def test_nifti_nan_and_float_rejected(tmp_path):
    data = np.ones((4, 4, 2), np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(IngestError, match="NaN") as info:
        read_nifti(tmp_path / "nan.nii")
    assert info.value.reason == "nan_values"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 2), np.float32), np.eye(4)), tmp_path / "f.nii")
    with pytest.raises(IngestError, match="floating point"):
        read_nifti(tmp_path / "f.nii")


def test_itk_mha_and_nrrd_roundtrip(tmp_path):
    import SimpleITK as sitk

    arr = (np.arange(2 * 5 * 6).reshape(2, 5, 6) * 3).astype(np.int16)
    for name in ("a.mha", "b.nrrd"):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.5, 0.6, 2.0))
        img.SetOrigin((1.0, 2.0, 3.0))
        sitk.WriteImage(img, str(tmp_path / name))
    items = [i for i in discover_inputs(tmp_path) if i.kind == "itk"]
    assert len(items) == 2
    for it in items:
        vol = read_item(it, root=tmp_path)
        assert np.array_equal(vol.array, arr)
        np.testing.assert_allclose(vol.geometry.spacing_mm, (0.5, 0.6, 2.0))
        new = vol.array.copy()
        new[0, 0, 0] += 1
        out = write_volume(vol.with_array(new, StepRecord(name="t")), tmp_path / "out" / f"x{it.item_id}.mha",
                           derivation="t")[0]
        back = sitk.ReadImage(str(out))
        assert np.array_equal(sitk.GetArrayFromImage(back), new)
        assert back.GetSpacing() == pytest.approx((0.5, 0.6, 2.0)) and back.GetOrigin() == pytest.approx((1, 2, 3))


def test_absurd_declared_sizes_are_refused_before_decoding(tmp_path):
    import pydicom

    from medue.errors import IngestError
    from medue.io.dicom import read_dicom_series
    from medue.io.itk import read_itk
    from medue.testing import make_dicom_series

    paths = make_dicom_series(tmp_path / "s", slices=1, size=16)
    ds = pydicom.dcmread(paths[0])
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 1000
    ds.save_as(paths[0])
    with pytest.raises(IngestError, match="GiB") as err:
        read_dicom_series(paths)
    assert err.value.reason == "too_large"
    mha = tmp_path / "huge.mha"
    mha.write_text("ObjectType = Image\nNDims = 3\nDimSize = 65535 65535 1000\nElementType = MET_SHORT\n"
                   "ElementDataFile = LOCAL\n")
    with pytest.raises(IngestError, match="GiB"):
        read_itk(mha)
