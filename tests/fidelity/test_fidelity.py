import numpy as np
import pytest

from medue.fidelity.checks import FidelityThresholds, check_fidelity
from medue.fidelity.metrics import compute_psnr, compute_ssim, fraction_changed, max_abs_diff


def test_psnr_reference_value():
    """PSNR = 10 log10(R^2 / MSE): a uniform error of 1 with R = 255 gives 48.1308 dB (closed form)."""
    a = np.zeros((8, 8), np.uint8)
    assert compute_psnr(a, a + 1, data_range=255) == pytest.approx(10 * np.log10(255**2), abs=1e-4)
    assert compute_psnr(a, a, data_range=255) == float("inf")


def test_ssim_identity_and_decrease():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 200, (2, 32, 32)).astype(np.int16)
    assert compute_ssim(a, a, data_range=200) == pytest.approx(1.0)
    assert compute_ssim(a, a + rng.integers(-20, 20, a.shape).astype(np.int16), data_range=200) < 0.99


def test_explicit_data_range_required():
    with pytest.raises(ValueError, match="data_range must be > 0"):
        compute_psnr(np.zeros(3), np.ones(3), data_range=0)
    with pytest.raises(ValueError, match="same shape"):
        compute_ssim(np.zeros((8, 8)), np.zeros((8, 9)), data_range=1)


def test_counts():
    a = np.zeros((2, 4, 4), np.int16)
    b = a.copy()
    b[0, 0, :2] = [3, -5]
    assert max_abs_diff(a, b) == 5 and fraction_changed(a, b) == pytest.approx(2 / 32)


def test_gate_passes_and_fails_with_every_reason():
    a = np.full((2, 16, 16), 100, np.int16)
    a[:, 4:12, 4:12] = 900
    b = a.copy()
    b[0, 5, 5] += 4
    ok = check_fidelity(a, b, FidelityThresholds(min_psnr_db=40, min_ssim=0.9), rescale_slope=2.0)
    assert ok.passed and ok.max_abs_units == 4 and ok.max_abs_physical == 8.0 and ok.data_range == 800
    strict = FidelityThresholds(min_psnr_db=80, min_ssim=0.99999, max_abs_units=3, max_abs_physical=7,
                                max_fraction_changed=0.001)
    bad = check_fidelity(a, b, strict, rescale_slope=2.0)
    assert not bad.passed and len(bad.failures) == 5
    assert bad.to_dict()["passed"] is False and bad.to_dict()["psnr_db"] is not None


def test_diagnostic_preservation_counts_drop_and_agreement():
    from medue.fidelity.diagnostic import diagnostic_preservation

    labels = np.array([0, 0, 1, 1, 1])
    original = np.array([0, 0, 1, 1, 0])  # 4/5 correct
    protected = np.array([0, 1, 1, 1, 0])  # 3/5 correct, one prediction changed
    d = diagnostic_preservation(labels, original, protected, max_accuracy_drop=0.1)
    assert d["accuracy_original"] == 0.8 and d["accuracy_protected"] == 0.6
    assert d["accuracy_drop"] == pytest.approx(0.2) and d["agreement"] == 0.8 and d["passed"] is False
    assert diagnostic_preservation(labels, original, original, max_accuracy_drop=0.0)["passed"] is True
    assert diagnostic_preservation(labels, original, protected, max_accuracy_drop=None)["passed"] is None
    with pytest.raises(ValueError, match="of one length"):
        diagnostic_preservation(labels, original[:3], protected)
    with pytest.raises(ValueError, match=r"max_accuracy_drop must be in \[0, 1\]"):
        diagnostic_preservation(labels, original, protected, max_accuracy_drop=2)


@pytest.mark.parametrize("shape, dtype, span", [((3, 64, 64), np.uint8, 255), ((2, 5, 9), np.uint8, 255),
                                                ((4, 40, 33), np.int16, 4095), ((48, 48), np.int16, 2000)])
def test_one_pass_metrics_match_scikit_image(shape, dtype, span):
    """volume_metrics (torch, float64, chunked) gives scikit-image's PSNR and per-slice SSIM to rounding."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from medue.fidelity.metrics import volume_metrics

    rng = np.random.default_rng(1)
    a = rng.integers(0, span, shape).astype(dtype)
    b = np.clip(a.astype(np.int64) + rng.integers(-8, 9, shape) * (rng.random(shape) < 0.2), 0, span).astype(dtype)
    if b.ndim == 3:
        b[1] = a[1]  # an unchanged slice (SSIM 1 without filtering) among changed ones
    m = volume_metrics(a, b, data_range=span, budget_bytes=1)  # one slice per chunk: the chunking is exercised
    whole = volume_metrics(a, b, data_range=span)  # all slices in one chunk, the unchanged one masked out
    assert whole.ssim == pytest.approx(m.ssim, abs=1e-12)
    a3, b3 = (a[None], b[None]) if a.ndim == 2 else (a, b)
    win = min(7, *shape[-2:])
    win = win if win % 2 else win - 1
    ref = np.mean([structural_similarity(x.astype(float), y.astype(float), data_range=span, win_size=win)
                   for x, y in zip(a3, b3)])
    assert m.ssim == pytest.approx(ref, abs=1e-12)
    assert m.psnr_db == pytest.approx(peak_signal_noise_ratio(a.astype(float), b.astype(float), data_range=span))
    assert m.per_slice_psnr_db == pytest.approx(
        [peak_signal_noise_ratio(x.astype(float), y.astype(float), data_range=span) for x, y in zip(a3, b3)])
    assert m.max_abs_units == max_abs_diff(a, b) and m.fraction_changed == fraction_changed(a, b)


@pytest.mark.gpu
def test_one_pass_metrics_are_the_same_on_a_gpu():
    import torch

    from medue.fidelity.metrics import volume_metrics

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(2)
    a = rng.integers(0, 4000, (5, 64, 64)).astype(np.int16)
    b = a + (rng.random(a.shape) < 0.1).astype(np.int16) * 8
    gpu, cpu = volume_metrics(a, b, data_range=4000, device="cuda"), volume_metrics(a, b, data_range=4000)
    assert gpu.ssim == pytest.approx(cpu.ssim, abs=1e-12) and gpu.psnr_db == pytest.approx(cpu.psnr_db)
    assert (gpu.max_abs_units, gpu.fraction_changed) == (cpu.max_abs_units, cpu.fraction_changed)


def test_efficacy_evidence_applies_across_parameters_added_later_at_their_defaults():
    from medue.fidelity.diagnostic import efficacy_applies
    from medue.protect import build_protector

    now = build_protector("salm-samplewise", epsilon=8).params()
    then = {k: v for k, v in now.items() if k not in ("fine_ratio", "fine_tile")}  # measured before they existed
    from medue.records import EfficacyResult

    result = EfficacyResult.from_dict({"schema": "medue.release_efficacy/1", "method": "salm-samplewise",
                                       "params": then})
    assert efficacy_applies(result, "salm-samplewise", now) == (True, "")
    changed = {**now, "fine_ratio": 0.2}  # not the default: it was not measured
    ok, why = efficacy_applies(result, "salm-samplewise", changed)
    assert not ok and "fine_ratio: None there, 0.2 here" in why
    ok, why = efficacy_applies(result, "salm-samplewise", {**now, "epsilon": 4})
    assert not ok and "epsilon: 8 there, 4 here" in why


def test_relative_change_measures_a_gain_change_on_tissue_not_background():
    from medue.fidelity.metrics import volume_metrics

    original = np.zeros((2, 32, 32), dtype=np.int64)
    original[:, 8:24, 8:24] = 100  # tissue at 100 on a black background
    protected = original.copy()
    protected[:, 8:24, 8:24] = 110  # a 10 % gain on the tissue
    protected[:, :4, :4] = 5  # background noise: no intensity to be relative to
    m = volume_metrics(original, protected, data_range=255)
    assert abs(m.max_relative_change - 0.10) < 1e-9
    assert volume_metrics(original, original, data_range=255).max_relative_change == 0.0


def test_the_diagnostic_check_is_inconclusive_when_no_clean_model_learned_the_task():
    """A clean-trained model that did not fit (train 0.50) scores at chance on both versions: its zero drop proves
    nothing, so the check says "inconclusive" with what to do, never "pass"."""
    from medue.fidelity.diagnostic import release_diagnostic_check
    from medue.protect import build_protector
    from medue.records import EfficacyResult

    params = build_protector("lines").params()

    def result(train_accuracy, accuracy):
        return EfficacyResult.from_dict({
            "schema": "medue.release_efficacy/1", "method": "lines", "params": params,
            "dataset": {"name": "site", "majority_class_accuracy": 0.5},
            "rows": [{"attack": "plain_cnn", "architecture": "plain_cnn", "training_data": "clean", "seed": 0,
                      "train_accuracy": train_accuracy, "clean_test_accuracy": accuracy,
                      "fit": train_accuracy >= 0.98}],
            "diagnostic": {"plain_cnn": {"images": 40, "accuracy_original": accuracy, "accuracy_protected": accuracy,
                                         "accuracy_drop": 0.0, "agreement": 1.0}}})

    check = release_diagnostic_check(result(0.5, 0.5), "lines", params, 0.02)
    assert check["result"] == "inconclusive" and "did not learn the task" in check["note"]
    assert "training accuracy 0.50" in check["note"] and "--epochs" in check["note"]
    assert release_diagnostic_check(result(0.99, 0.93), "lines", params, 0.02)["result"] == "pass"
