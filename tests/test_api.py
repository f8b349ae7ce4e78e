"""The library API: the README example runs as written, float volumes keep their budget, and protect_folder is
the release job."""

import re
from pathlib import Path

import numpy as np
import pytest

from medue.api import fit, protect_folder, protect_volume
from medue.testing import make_nifti, phantom

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- example: library -->\s*```python\n(.*?)```", text, flags=re.S)
    assert match, "README lost its library example"
    return match.group(1)


def test_readme_library_example_runs(tmp_path, capsys):
    scope: dict = {}
    exec(compile(_example(), "README.md", "exec"), scope)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("True ") and out[0].endswith(" 8")  # passed, PSNR, max |delta| = budget
    assert "torch.Size([1, 32, 32, 2]) True" in out[1]
    inputs = tmp_path / "in"
    make_nifti(inputs / "a.nii.gz", shape=(24, 24, 2), seed=1)
    make_nifti(inputs / "b.nii.gz", shape=(24, 24, 2), seed=2)
    (tmp_path / "labels.csv").write_text("path,label\na.nii.gz,no\nb.nii.gz,yes\n")
    counts = scope["release_task"](str(inputs), str(tmp_path / "out"), str(tmp_path / "labels.csv"))
    assert counts["done"] + counts.get("gate_failed", 0) == 2
    assert (tmp_path / "out" / "release" / "manifest.json").is_file()


def test_float_volume_changes_by_whole_units_within_its_range():
    vols = [phantom((2, 24, 24), seed=i).astype(np.float32) * 0.01 for i in range(4)]
    params = {"epsilon": 6, "mode": "classwise", "placement": "flat", "mask_ratio": 0.3, "tile": 4,
              "init": "grating", "max_rounds": 0}
    protector = fit(vols, [0, 1, 0, 1], key="k" * 20, method="salm-samplewise", params=params)
    res = protect_volume(vols[0], protector, key="k" * 20, label=0, unit=0.05)
    assert res.array.dtype == np.float32 and res.unit == 0.05
    k = res.delta / 0.05
    assert np.allclose(k, np.round(k), atol=1e-3) and np.abs(k).max() <= 6 + 1e-3 and np.abs(k).max() >= 1
    assert res.array.min() >= vols[0].min() and res.array.max() <= vols[0].max()
    again = protect_volume(vols[0], protector, key="k" * 20, label=0, unit=0.05)
    assert np.array_equal(again.array, res.array)  # deterministic for the key


def test_fit_refuses_mixed_sizes_and_nan():
    with pytest.raises(Exception, match="in-plane sizes"):
        fit([np.zeros((1, 8, 8), np.int16), np.zeros((1, 9, 9), np.int16)], key="k" * 20, method="conv")
    with pytest.raises(Exception, match="NaN"):
        protect_volume(np.full((1, 8, 8), np.nan, np.float32), None, key="k" * 20)  # type: ignore[arg-type]


def test_protect_folder_reports_config_problems_all_at_once(tmp_path):
    from medue.errors import InvalidConfigError

    with pytest.raises(InvalidConfigError) as info:
        protect_folder(tmp_path, tmp_path / "out", key="k" * 20, method="nope", fidelity={"min_ssim": "high"})
    assert len(info.value.problems) >= 2


def test_protectd_takes_a_unit_for_float_images_and_the_api_flags_a_blank_class():
    import torch

    from medue.transforms import ProtectD

    vols = [phantom((2, 24, 24), seed=i).astype(np.int16) for i in range(4)]
    protector = fit(vols, [0, 1, 0, 1], key="k" * 20, method="lines", params={"epsilon": 4})
    blank = protect_volume(vols[0], protector, key="k" * 20, label=0)  # lines: the first class carries no pattern
    assert blank.passed and blank.unchanged_on_purpose and not np.any(blank.delta)
    marked = protect_volume(vols[1], protector, key="k" * 20, label=1)
    assert not marked.unchanged_on_purpose and np.any(marked.delta)
    hu = torch.from_numpy(np.moveaxis(vols[1].astype(np.float32), 0, -1))[None]  # (C, H, W, D), float as LoadImaged
    out = ProtectD("image", protector, key="k" * 20, label_key="label", unit=1.0,
                   thresholds=None, allow_failed=True)({"image": hu, "label": 1})
    change = (out["image"] - hu).numpy()
    assert np.array_equal(change, np.round(change)) and 0 < np.abs(change).max() <= 4  # 4 units of 1 HU each


def test_fit_is_the_fit_of_medue_run(tmp_path):
    """api.fit runs the pipeline's fit (medue.pipeline.fit.fit_slices): with the same key, release name, volumes and
    labels it learns the same state as `medue run` of that release."""
    from medue.io import discover_inputs, read_item
    from medue.layout import OutputLayout
    from medue.records import FitRecord

    KEY = "a-site-key-of-many-characters-0123456789"  # noqa: N806
    inputs = tmp_path / "in"
    make_nifti(inputs / "a.nii", shape=(16, 16, 3), seed=1, slope=1.0, inter=0.0)
    make_nifti(inputs / "b.nii", shape=(16, 16, 3), seed=2, slope=1.0, inter=0.0)
    (tmp_path / "labels.csv").write_text("path,label\na.nii,no\nb.nii,yes\n")
    params = {"epsilon": 4, "mode": "classwise", "tile": 4, "max_rounds": 1, "inner_steps": 2, "train_steps": 2}
    out = protect_folder(inputs, tmp_path / "out", key=KEY, method="em", params=params, name="rel",
                         labels={"source": "table", "table": str(tmp_path / "labels.csv")},
                         fidelity={"min_psnr_db": 10, "min_ssim": 0.1}, tracking={"enabled": False})
    assert out["exit_code"] == 0
    record = FitRecord.read(OutputLayout(tmp_path / "out").fit_record)
    items = discover_inputs(inputs)  # in the order the release fits them
    volumes = [read_item(item, root=inputs) for item in items]
    labels = [0 if item.paths[0].endswith("a.nii") else 1 for item in items]
    ours = fit(volumes, labels, key=KEY, method="em", params=params, device="cpu", release_name="rel")
    assert record.state_fingerprint and ours.state_fingerprint() == record.state_fingerprint
