import json

import nibabel as nib
import numpy as np
import pytest

from medue.efficacy import ReleaseEvalSettings, evaluate_release, results_markdown, stratified_split, write_image_set
from medue.efficacy import countermeasures as cm
from medue.efficacy.attackers import ATTACKERS, build_attacker
from medue.errors import InvalidConfigError
from medue.pipeline.config import parse_config
from medue.provenance import sha256_file


def _sample_images(n_per_class: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load("sample_data/classification/br35h_64.npz") as d:
        images, labels = d["images"], d["labels"]
    idx = np.r_[0:n_per_class, 500:500 + n_per_class]
    step = images.shape[-1] // size
    return images[idx][:, ::step, ::step].copy(), labels[idx]


def test_countermeasures_change_images_as_expected():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 16, 16)).astype(np.uint8)
    assert len(np.unique(cm.bit_depth(x, bits=3))) <= 8
    assert cm.median(x).shape == x.shape and not np.array_equal(cm.median(x), x)
    assert cm.jpeg(x, quality=10).dtype == np.uint8 and not np.array_equal(cm.jpeg(x), x)


def test_stratified_split_and_image_set_files(tmp_path):
    images, labels = _sample_images(10, 16)
    tr, te = stratified_split(labels, 0.2, 0)
    assert not set(tr) & set(te) and np.bincount(labels[te]).tolist() == [2, 2]
    info = write_image_set(tmp_path / "set", images, labels, ["no", "yes"], fmt="dicom", name="t")
    assert info["counts"] == {"train": {"no": 8, "yes": 8}, "test": {"no": 2, "yes": 2}}
    files = sorted((tmp_path / "set" / "train").iterdir())
    assert len(files) == 16 and all(f.name.startswith("img_") for f in files)
    rows = (tmp_path / "set" / "train_labels.csv").read_text().splitlines()
    assert rows[0] == "path,label" and len(rows) == 17


@pytest.mark.parametrize("arch", ATTACKERS)
def test_attackers_build_and_run(arch):
    import torch

    model = build_attacker(arch, 2, image_size=32, width=4)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 2)


def _fast_config(**protect):
    return parse_config({
        "name": "eval-test", "input": "unused", "output": "unused", "deidentification": "warn",
        "key": {"env": "MEDUE_TEST_UNSET_KEY", "file": "pipelines/demo.key"},
        "protect": {"method": "salm", "params": {"epsilon": 8, "mode": "classwise", "tile": 4, "mask_ratio": 0.2,
                                                  "max_rounds": 1, "train_steps": 2, "inner_steps": 1,
                                                  "init": "random", **protect}},
        "fidelity": {"min_psnr_db": 20, "min_ssim": 0.5},
        "tracking": {"enabled": False},
    })


def test_evaluate_reads_what_run_wrote_and_never_protects_test_images(tmp_path):
    images, labels = _sample_images(10, 16)
    root = tmp_path / "set"
    write_image_set(root, images, labels, ["no", "yes"], fmt="nifti", name="tiny")
    test_hashes = {f.name: sha256_file(f) for f in (root / "test").iterdir()}
    settings = ReleaseEvalSettings(attackers=(("plain_cnn", "none"),), countermeasures=("bit_depth_3",),
                                   countermeasure_attacker=("plain_cnn", "none"), seeds=(0, 1), epochs=1, width=4,
                                   device="cpu")
    lines: list[str] = []
    res = evaluate_release(_fast_config(), root, work=tmp_path / "work", settings=settings, log=lines.append)
    # progress: one line per epoch of each training run, then the row
    assert sum("epoch 1/1" in line for line in lines) == 6 and sum("clean-test" in line for line in lines) == 6

    # the release run wrote the files the attackers trained on
    released = sorted((tmp_path / "work" / "release").glob("*.nii.gz"))
    assert len(released) == 16 and res["exported"] == {"no": 8, "yes": 8} == res["expected"]
    originals = {f.name: np.asarray(nib.load(f).dataobj) for f in (root / "train").iterdir()}
    changed = [not any(np.array_equal(np.asarray(nib.load(f).dataobj), o) for o in originals.values())
               for f in released]
    assert all(changed)  # every released file differs from every original: the attackers read protected data
    assert {f.name: sha256_file(f) for f in (root / "test").iterdir()} == test_hashes  # test set untouched
    assert res["labels_used"] and res["method"] == "salm" and res["params"]["mode"] == "classwise"
    assert res["fidelity"]["max_abs_units"] <= 8 and res["dataset"]["name"] == "tiny"

    rows = res["rows"]
    # (plain_cnn none) + (plain_cnn bit_depth_3), each: clean seed 0 + protected seeds 0 and 1
    assert len(rows) == 6
    assert {(r["countermeasure"], r["training_data"], r["seed"]) for r in rows} == {
        (c, d, s) for c in ("none", "bit_depth_3") for d, s in (("clean", 0), ("protected", 0), ("protected", 1))}
    for r in rows:
        assert set(r) >= {"architecture", "augmentation", "countermeasure", "training_data", "seed",
                          "train_accuracy", "clean_test_accuracy", "epochs", "seconds", "fit"}
        assert r["fit"] == (r["train_accuracy"] >= 0.98)
    md = results_markdown(res)
    assert "tiny" in md and "Every run" in md
    json.dumps(res)  # JSON-ready

    # more seeds of the same release later: read back, the clean baselines reused (whatever seed trained them)
    more = ReleaseEvalSettings(attackers=(("plain_cnn", "none"),), countermeasures=(), seeds=(2,), epochs=1, width=4,
                               device="cpu")
    again = evaluate_release(_fast_config(), root, work=tmp_path / "work", settings=more, existing=True,
                             clean_from={**res, "file": "first.json"}, log=lambda s: None)
    assert [(r["training_data"], r["seed"], r.get("reused_from")) for r in again["rows"]] == [
        ("clean", 0, "first.json"), ("protected", 2, None)]
    assert again["rows"][0]["clean_test_accuracy"] == rows[0]["clean_test_accuracy"] and again["release_existing"]


def test_release_without_labels_and_gate_skew_is_reported(tmp_path):
    images, labels = _sample_images(6, 16)
    root = tmp_path / "set"
    write_image_set(root, images, labels, ["no", "yes"], fmt="nifti", name="tiny")
    cfg = parse_config({**_fast_config().to_dict(), "fidelity": {"min_psnr_db": 99, "min_ssim": 0.5}})
    settings = ReleaseEvalSettings(attackers=(("plain_cnn", "none"),), countermeasures=(), seeds=(0,), epochs=1,
                                   width=4, device="cpu")
    res = evaluate_release(cfg, root, work=tmp_path / "work", labels_used=False, settings=settings,
                           log=lambda s: None)
    assert res["labels_used"] is False and res["exported"] == {"no": 0, "yes": 0}
    assert res["not_exported"] == {"gate_failed": 10} and res["release_exit_code"] == 3
    assert [r["training_data"] for r in res["rows"]] == ["clean"]  # nothing released: no protected row


def test_settings_validation_lists_every_problem():
    with pytest.raises(InvalidConfigError) as err:
        ReleaseEvalSettings(attackers=(("vgg", "none"), ("plain_cnn", "mixup")), countermeasures=("blur",),
                            epochs=0).validate()
    text = str(err.value)
    assert "vgg" in text and "mixup" in text and "blur" in text and "epochs" in text
