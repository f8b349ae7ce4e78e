import numpy as np
import pytest

from medue.efficacy import EfficacyConfig, load_classification_set, results_markdown, run_efficacy, stratified_split
from medue.efficacy import countermeasures as cm
from medue.efficacy.train import TrainSettings
from medue.errors import InvalidConfigError


def test_countermeasures_change_images_as_expected():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 16, 16)).astype(np.uint8)
    assert len(np.unique(cm.bit_depth(x, bits=3))) <= 8
    assert cm.median(x).shape == x.shape and not np.array_equal(cm.median(x), x)
    assert cm.jpeg(x, quality=10).dtype == np.uint8 and not np.array_equal(cm.jpeg(x), x)
    assert np.array_equal(cm.grayscale(x), x)


def test_sample_dataset_and_split():
    images, labels, names = load_classification_set("sample_data/classification/br35h_64.npz", 16)
    assert images.shape == (1000, 16, 16) and images.dtype == np.uint8 and names == ["no_tumor", "tumor"]
    tr, te = stratified_split(labels, 0.2, 0)
    assert len(set(tr) & set(te)) == 0 and len(te) == 200 and np.bincount(labels[te]).tolist() == [100, 100]


def test_tiny_efficacy_run_reports_every_countermeasure(tmp_path):
    images, labels, _ = load_classification_set("sample_data/classification/br35h_64.npz", 16)
    idx = np.r_[0:40, 500:540]
    np.savez(tmp_path / "mini.npz", images=images[idx], labels=labels[idx], class_names=np.array(["a", "b"]))
    config = EfficacyConfig(dataset=str(tmp_path / "mini.npz"), image_size=16, device="cpu",
                            methods={"conv": {}, "salm": {"max_rounds": 1, "inner_steps": 2, "train_steps": 2}},
                            architectures=("monai_classifier",), countermeasures=("bit_depth_3",),
                            countermeasure_architecture="monai_classifier", train=TrainSettings(epochs=1, width=4))
    res = run_efficacy(config, log=lambda s: None)
    assert set(res["results"]["monai_classifier"]) == {"clean", "conv", "salm"}
    assert res["countermeasures"]["bit_depth_3"]["status"] == "tested"
    assert res["countermeasures"]["jpeg_q10"] == {"status": "not tested", "reason": "not selected in the config"}
    assert res["protection"]["salm"]["linf_units"] <= 8 and res["config"]["key"] == "(not recorded)"
    assert "not tested" in results_markdown(res)
    diag = res["diagnostic"]["monai_classifier"]
    assert set(diag) == {"conv", "salm"}
    for d in diag.values():
        assert d["images"] == 16 and 0 <= d["agreement"] <= 1
        assert d["accuracy_drop"] == pytest.approx(d["accuracy_original"] - d["accuracy_protected"], abs=1e-3)
    assert "Diagnostic content preserved" in results_markdown(res)


def test_efficacy_config_validation():
    with pytest.raises(InvalidConfigError, match="unknown method 'slm'"):
        EfficacyConfig(methods={"slm": {}}, architectures=("vgg",)).validate()
