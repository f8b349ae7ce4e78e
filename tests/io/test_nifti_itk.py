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
    with pytest.raises(IngestError, match="floating point.*protect.unit"):
        read_nifti(tmp_path / "f.nii")


def test_float_nifti_is_read_in_whole_units_only_when_every_voxel_is_on_a_step(tmp_path):
    hu = np.arange(-1024, 1024, 16, dtype=np.float32).reshape(8, 8, 2)  # CT saved as float HU
    nib.save(nib.Nifti1Image(hu, np.eye(4)), tmp_path / "ct.nii")
    vol = read_nifti(tmp_path / "ct.nii", float_unit=1.0)
    assert vol.array.dtype == np.int32 and vol.header["float_unit"] == 1.0
    assert np.array_equal(vol.array, hu.transpose(2, 1, 0).astype(np.int32))
    assert read_nifti(tmp_path / "ct.nii", float_unit=0.5).array.max() == 2 * 1008  # half-HU steps: 2 per HU
    off = hu.copy()
    off[0, 0, 0] += 0.25  # one voxel between steps: refused, never rounded
    nib.save(nib.Nifti1Image(off, np.eye(4)), tmp_path / "off.nii")
    with pytest.raises(IngestError, match="1 of 128 voxels are not whole multiples of protect.unit 1") as info:
        read_nifti(tmp_path / "off.nii", float_unit=1.0)
    assert info.value.reason == "unsupported"
    signed = hu.copy()
    signed[0, 0, 1] = -0.0  # equal to 0.0, but not the same bits: a bit-exact release says so instead of losing it
    nib.save(nib.Nifti1Image(signed, np.eye(4)), tmp_path / "signed.nii")
    with pytest.raises(IngestError, match="1 of 128 voxels hold negative zero"):
        read_nifti(tmp_path / "signed.nii", float_unit=1.0)
    out = write_nifti(vol.with_array(vol.array + 3, StepRecord(name="t", params={})), tmp_path / "out.nii")
    written = np.asanyarray(nib.load(str(out)).dataobj.get_unscaled())
    assert written.dtype == np.float32 and np.array_equal(written, hu + 3)  # the file's own float type, +3 HU


def test_float_nifti_released_with_a_unit_restores_bit_exactly(tiny_config, tmp_path):
    from medue.io.restore import restore_nifti
    from medue.pipeline.config import load_config
    from medue.pipeline.runner import run_pipeline

    rng = np.random.default_rng(0)
    hu = np.round(rng.normal(40, 300, (24, 20, 3))).astype(np.float32) + np.float32(0)  # whole float HU, no -0.0
    src = tmp_path / "in" / "float_ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 3.0, 1.0])), src)
    refused = run_pipeline(load_config(tiny_config()))
    assert [m.reason for m in refused.markers if m.status == "quarantined"] == ["unsupported"]
    cfg = load_config(tiny_config(protect={"unit": 1.0}, output=str(tmp_path / "out_unit")))
    summary = run_pipeline(cfg)
    marker = next(m for m in summary.markers if m.format == "nifti" and m.dtype == "int32")
    assert marker.exported and summary.counts.get("quarantined") is None
    released = cfg.output_path / "release" / marker.outputs[0]["path"]
    data = np.asanyarray(nib.load(str(released)).dataobj.get_unscaled())
    assert data.dtype == np.float32 and 0 < np.count_nonzero(data != hu) and np.abs(data - hu).max() <= 4
    restored = restore_nifti(released, cfg.output_path / marker.delta["path"], tmp_path / "restored.nii.gz")
    back = np.asanyarray(nib.load(str(tmp_path / "restored.nii.gz")).dataobj.get_unscaled())
    assert restored > 0 and back.tobytes() == hu.tobytes()  # bit for bit


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


def test_a_unit_that_puts_the_budget_above_the_physical_limit_is_warned_about(tiny_config):
    from medue.pipeline.config import load_config

    assert load_config(tiny_config(protect={"unit": 1.0})).unit_warning() is None  # 4 units = 4 HU
    cfg = load_config(tiny_config(protect={"unit": 5.0}, fidelity={"max_abs_physical": 10}))
    assert "epsilon 4 units = 20 in the image's values, above fidelity.max_abs_physical 10" in cfg.unit_warning()
    assert "lower epsilon to 2" in cfg.unit_warning()


def test_float_mha_with_a_unit_round_trips_in_its_own_float_type(tmp_path):
    import SimpleITK as sitk

    from medue.io.itk import read_itk, write_itk

    hu = (np.arange(2 * 6 * 5, dtype=np.float32).reshape(2, 6, 5) * 4 - 100) + np.float32(0)
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(tmp_path / "ct.mha"))
    with pytest.raises(IngestError, match="protect.unit"):
        read_itk(tmp_path / "ct.mha")
    vol = read_itk(tmp_path / "ct.mha", float_unit=2.0)  # 2-HU steps: 4 HU apart is 2 units
    assert vol.array.dtype == np.int32 and vol.header["float_unit"] == 2.0 and vol.rescale[0] == 2.0
    out = write_itk(vol.with_array(vol.array + 1, StepRecord(name="t", params={})), tmp_path / "out.mha")
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert back.dtype == np.float32 and np.array_equal(back, hu + 2)  # one unit = 2 HU, in float32


def test_a_float_unit_with_a_dtype_data_range_is_refused(tiny_config):
    from medue.errors import InvalidConfigError
    from medue.pipeline.config import load_config

    with pytest.raises(InvalidConfigError, match="fidelity.data_range: 'dtype'.*use 'volume'"):
        load_config(tiny_config(protect={"unit": 1.0}, fidelity={"data_range": "dtype"}))
