import json

import pytest

from medue.errors import InvalidConfigError
from medue.io import discover_inputs
from medue.labels import resolve_labels
from medue.pipeline.config import load_config
from medue.pipeline.runner import run_pipeline
from medue.testing import make_dicom_series, make_nifti


def _inputs(root):
    make_nifti(root / "tumor" / "a.nii.gz", shape=(16, 16, 2), seed=1)
    make_nifti(root / "tumor" / "b.nii.gz", shape=(16, 16, 2), seed=2)
    make_nifti(root / "healthy" / "c.nii.gz", shape=(16, 16, 2), seed=3)
    make_dicom_series(root / "healthy" / "series", slices=2, size=16, seed=4)
    return discover_inputs(root)


def test_table_folder_and_dicom_attribute_sources(tmp_path):
    root = tmp_path / "in"
    items = _inputs(root)
    table = tmp_path / "labels.csv"
    table.write_text("path,label\ntumor/a.nii.gz,T\ntumor/b.nii.gz,T\nhealthy/c.nii.gz,H\nhealthy/series,H\n")
    labels, problems = resolve_labels(items, root=root, source="table", table=table)
    assert not problems and labels.classes == ("H", "T") and labels.counts() == {"H": 2, "T": 2}

    labels, problems = resolve_labels(items, root=root, source="folder")
    assert not problems and labels.counts() == {"healthy": 2, "tumor": 2}

    labels, problems = resolve_labels(items, root=root, source="dicom_attribute", attribute="Modality")
    assert "3 input item(s) have no label" in problems[0]  # the NIfTI files carry no DICOM attribute


def test_every_labelling_problem_is_listed_at_once(tmp_path):
    root = tmp_path / "in"
    items = _inputs(root)
    table = tmp_path / "labels.tsv"
    table.write_text("path\tlabel\ntumor/a.nii.gz\tT\nnot/there.nii\tH\nhealthy/c.nii.gz\t\n")
    labels, problems = resolve_labels(items, root=root, source="table", table=table)
    text = "\n".join(problems)
    assert "line 4: empty label" in text and "1 row(s) match no input item" in text
    assert "3 input item(s) have no label" in text and "found 1 class(es)" in text
    assert str(root) not in text and "tumor/b" not in text  # items are named by id, not by path


def test_labelled_release_keeps_labels_private(tiny_config, tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("path,label\nseries_a,tumour_grade_2\nvol.nii.gz,normal\n")
    cfg = load_config(tiny_config(labels={"source": "table", "table": str(table)},
                                  protect={"method": "salm-samplewise", "params": {"epsilon": 4, "mode": "classwise", "tile": 4,
                                                                         "mask_ratio": 0.2, "max_rounds": 1,
                                                                         "train_steps": 2, "inner_steps": 1}}))
    summary = run_pipeline(cfg)
    assert summary.exit_code == 0 and summary.counts["done"] == 2
    private = json.loads((cfg.output_path / "private" / "labels.local.json").read_text())
    assert private["classes"] == ["normal", "tumour_grade_2"]
    fit = json.loads((cfg.output_path / "private" / "protector.json").read_text())
    assert fit["labels_used"] is True and fit["slices"] == 4 + 3
    for path in (cfg.output_path / "release").rglob("*"):
        if path.is_file():
            assert b"tumour_grade_2" not in path.read_bytes() and "tumour" not in path.name
    report = json.loads((cfg.output_path / "release" / "report.json").read_text())
    assert sorted(report["protection"]["by_class"]) == ["class 1", "class 2"]  # counts per class, names kept private


def test_class_wise_method_without_labels_is_a_config_error(tiny_config):
    with pytest.raises(InvalidConfigError, match="needs labels"):
        load_config(tiny_config(protect={"method": "conv", "params": {}}))


def test_blank_class_releases_the_first_class_unchanged_on_purpose(tiny_config, tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("path,label\nseries_a,tumour\nvol.nii.gz,normal\n")  # classes sorted: normal is the first
    cfg = load_config(tiny_config(labels={"source": "table", "table": str(table)},
                                  protect={"method": "salm-samplewise", "params": {"epsilon": 4, "mode": "classwise", "tile": 4,
                                                                         "placement": "flat", "init": "grating",
                                                                         "mask_ratio": 0.3, "max_rounds": 0,
                                                                         "blank_class": True}},
                                  fidelity={"min_psnr_db": 20, "min_ssim": 0.5, "max_abs_units": 4}))
    summary = run_pipeline(cfg)
    assert summary.counts["done"] == 2
    by_label = {}
    index = json.loads((cfg.output_path / "private" / "inputs.local.json").read_text())
    for m in summary.markers:
        name = index[m.item_id]["paths"][0]
        by_label["normal" if name.endswith("vol.nii.gz") else "tumour"] = m
    assert by_label["normal"].fidelity["fraction_changed"] == 0 and by_label["normal"].unchanged_on_purpose
    assert by_label["tumour"].fidelity["fraction_changed"] > 0 and by_label["tumour"].unchanged_on_purpose is None


def test_unbounded_conv_fails_the_gate_as_published_and_is_not_thinned_into_another_method(tiny_config, tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("path,label\nseries_a,tumour\nvol.nii.gz,normal\n")
    cfg = load_config(tiny_config(labels={"source": "table", "table": str(table)},
                                  protect={"method": "conv", "params": {"epsilon": 4, "blur": 1.0}},
                                  fidelity={"min_psnr_db": 45, "min_ssim": 0.5, "max_abs_units": 4}))
    summary = run_pipeline(cfg)
    assert summary.counts.get("gate_failed") == 2 and summary.exit_code == 3
    for m in summary.markers:
        assert m.adapted is None and any("max |delta|" in f for f in m.fidelity["failures"])


def test_gate_adaptation_thins_a_dense_delta_to_the_configured_fraction_and_keeps_the_rest():
    """A dense method (class-wise EM changes ~every pixel) must not be dropped by a fraction-changed limit: the
    item keeps a keyed random subset of its noise, as large as the limit allows, at full amplitude."""
    import dataclasses

    import numpy as np

    from medue.fidelity.checks import FidelityThresholds, check_fidelity
    from medue.pipeline.job import JobContext, adapt_support
    from medue.provenance import StepRecord
    from medue.testing import make_volume

    vol = make_volume((2, 48, 48), dtype="uint16")
    sign = np.where(np.indices(vol.array.shape).sum(0) % 2 == 0, 8, -8)
    protected_array = (vol.array.astype(np.int64) + sign).clip(0, None).astype(vol.array.dtype)
    protected = vol.with_array(protected_array, StepRecord(name="em", stats={"linf_units": 8}))
    thresholds = FidelityThresholds(min_psnr_db=None, min_ssim=None, max_abs_units=8, max_fraction_changed=0.2)
    fid = check_fidelity(vol.array, protected_array, thresholds)
    assert not fid.passed and fid.fraction_changed > 0.7
    ctx = JobContext(out=".", input_root=".", key="k" * 32, key_fingerprint="f", method="em", thresholds=thresholds)
    out, fid2, kept = adapt_support(vol, protected, fid, ctx, 1.0)
    assert fid2.passed, fid2.failures
    assert 0.15 < fid2.fraction_changed <= 0.2 and fid2.max_abs_units == 8 and kept["amplitude_scale"] == 1.0
    again, _, _ = adapt_support(vol, protected, fid, dataclasses.replace(ctx), 1.0)
    assert np.array_equal(again.array, out.array)  # keyed: the same subset every time


@pytest.mark.parametrize("method,params", [
    ("salm-samplewise", {"epsilon": 4, "mode": "classwise", "placement": "flat", "mask_ratio": 0.45, "tile": 3,
              "init": "grating", "duty": 0.25, "blank_class": True, "max_rounds": 0}),
    ("conv", {"epsilon": 4}),
    ("t2ue", {"epsilon": 4, "train_steps": 3, "reference_size": 16, "random_texts": 2}),
])
def test_fit_from_labels_alone_reads_no_volume_and_matches_the_pixel_fit(method, params, tiny_config, tmp_path,
                                                                        monkeypatch):
    """A placed class pattern (and conv, t2ue) is fitted from the labels: no volume is read before export, and the
    protector is the one a fit over every slice gives."""
    import medue.pipeline.fit as runner  # the fit reads (or does not read) the items

    table = tmp_path / "labels.csv"
    table.write_text("path,label\nseries_a,tumour\nvol.nii.gz,normal\n")
    fingerprints = {}
    for pixels in (True, False):
        cfg = load_config(tiny_config(labels={"source": "table", "table": str(table)},
                                      protect={"method": method, "params": params},
                                      fidelity={"min_psnr_db": 0, "min_ssim": 0, "max_abs_units": 10**6},
                                      output=str(tmp_path / f"out_{pixels}")))
        with monkeypatch.context() as m:
            if pixels:
                m.setattr(type(runner.build_protector(method, **params)), "fit_uses_pixels",
                          lambda self, labelled: True)
            else:
                def no_read(*args, **kwargs):
                    raise AssertionError("the fit read a volume")
                m.setattr(runner, "read_item", no_read)  # the items themselves are read by the jobs, not here
            summary = run_pipeline(cfg)
        assert summary.exit_code == 0 and summary.counts["done"] == 2
        fit = json.loads((cfg.output_path / "private" / "protector.json").read_text())
        assert fit["pixels_used"] is pixels and fit["labels_used"] is True
        assert fit["slices"] == (4 + 3 if pixels else 0)
        fingerprints[pixels] = fit["state_fingerprint"]
    assert fingerprints[True] == fingerprints[False]
