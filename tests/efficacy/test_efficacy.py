import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medue.efficacy import ReleaseEvalSettings, evaluate_release, results_markdown, stratified_split, write_image_set
from medue.efficacy.attackers import ATTACKERS, build_attacker
from medue.errors import InvalidConfigError
from medue.evidence import summarise
from medue.pipeline.config import parse_config
from medue.provenance import sha256_file
from medue.records import EfficacyResult


def _sample_images(n_per_class: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load("sample_data/classification/br35h_64.npz") as d:
        images, labels = d["images"], d["labels"]
    idx = np.r_[0:n_per_class, 500:500 + n_per_class]
    step = images.shape[-1] // size
    return images[idx][:, ::step, ::step].copy(), labels[idx]


def _site(tmp_path, per_class: int, *, float_images: bool = False, unit: float | None = None, **overrides) -> Path:
    """A labelled site folder of ``per_class`` images per class and the path of a fast pipeline config over it."""
    import yaml

    images, labels = _sample_images(per_class, 16)
    root = tmp_path / "site"
    write_image_set(root, images, labels, ["no", "yes"], fmt="nifti", test_fraction=0.0, name="site")
    if float_images:
        for f in (root / "train").glob("*.nii*"):
            img = nib.load(f)
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.float32), img.affine), f)
    cfg = _fast_config().to_dict()
    cfg.update(input=str(root / "train"), output=str(tmp_path / "out"),
               labels={"source": "table", "table": str(root / "train_labels.csv")},
               report={"enabled": True}, key={"file": str(Path("pipelines/demo.key").resolve())}, **overrides)
    if unit is not None:
        cfg["protect"]["unit"] = unit
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


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
        "protect": {"method": "salm-samplewise", "params": {"epsilon": 8, "mode": "classwise", "tile": 4, "mask_ratio": 0.2,
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
    settings = ReleaseEvalSettings(attacks=("plain_cnn", "resnet18_bit_depth_3"), seeds=(0, 1), epochs=1, width=4,
                                   device="cpu")
    lines: list[str] = []
    partial = tmp_path / "partial.json"
    res = evaluate_release(_fast_config(), root, work=tmp_path / "work", settings=settings, log=lines.append,
                           partial=partial)
    # progress: one line per epoch of each training run, then the row
    assert sum("epoch 1/1" in line for line in lines) == 6 and sum("clean-test" in line for line in lines) == 6
    assert len(json.loads(partial.read_text())["rows"]) == 6  # rewritten after every row

    # the release run wrote the files the attackers trained on
    released = sorted((tmp_path / "work" / "release").glob("*.nii.gz"))
    assert len(released) == 16 and res["exported"] == {"no": 8, "yes": 8} == res["expected"]
    originals = {f.name: np.asarray(nib.load(f).dataobj) for f in (root / "train").iterdir()}
    changed = [not any(np.array_equal(np.asarray(nib.load(f).dataobj), o) for o in originals.values())
               for f in released]
    assert all(changed)  # every released file differs from every original: the attackers read protected data
    assert {f.name: sha256_file(f) for f in (root / "test").iterdir()} == test_hashes  # test set untouched
    assert res["labels_used"] and res["method"] == "salm-samplewise" and res["params"]["mode"] == "classwise"
    assert res["fidelity"]["max_abs_units"] <= 8 and res["dataset"]["name"] == "tiny"
    assert res["dataset"]["modality"] == "OT" and res["dataset"]["clean_pool"] == 0  # no mixing: nothing held out

    rows = res["rows"]
    # two attacks, each: clean seed 0 + protected seeds 0 and 1
    assert len(rows) == 6
    assert {(r["attack"], r["training_data"], r["seed"]) for r in rows} == {
        (a, d, s) for a in ("plain_cnn", "resnet18_bit_depth_3")
        for d, s in (("clean", 0), ("protected", 0), ("protected", 1))}
    for r in rows:
        assert set(r) >= {"attack", "habit", "architecture", "augmentation", "countermeasure", "training_data",
                          "seed", "train_accuracy", "clean_test_accuracy", "epochs", "seconds", "fit",
                          "train_images"}
        assert r["fit"] == (r["train_accuracy"] >= 0.98) and r["train_images"] == 16
    md = results_markdown(res)
    assert "tiny" in md and "Every run" in md and "worst seed" in md
    json.dumps(res)  # JSON-ready

    # more seeds of the same release later: read back, the clean baselines reused (whatever seed trained them)
    more = ReleaseEvalSettings(attacks=("plain_cnn",), seeds=(2,), epochs=1, width=4, device="cpu")
    again = evaluate_release(_fast_config(), root, work=tmp_path / "work", settings=more, existing=True,
                             clean_from=EfficacyResult.from_dict(res), clean_from_file="first.json",
                             log=lambda s: None)
    assert [(r["training_data"], r["seed"], r.get("reused_from")) for r in again["rows"]] == [
        ("clean", 0, "first.json"), ("protected", 2, None)]
    assert again["rows"][0]["clean_test_accuracy"] == rows[0]["clean_test_accuracy"] and again["release_existing"]


def test_mixing_attacks_draw_from_a_pool_the_release_never_held(tmp_path):
    images, labels = _sample_images(10, 16)
    root = tmp_path / "set"
    write_image_set(root, images, labels, ["no", "yes"], fmt="nifti", name="tiny")
    settings = ReleaseEvalSettings(attacks=("resnet18_mix25", "resnet18_half_resolution"), seeds=(0,), epochs=1,
                                   width=4, device="cpu", mix_pool=0.25)
    res = evaluate_release(_fast_config(), root, work=tmp_path / "work", settings=settings, log=lambda s: None,
                           models_dir=tmp_path / "models")
    # every trained attacker saved as TorchScript taking release-size images, with what it trained on beside it
    saved = sorted(p.name for p in (tmp_path / "models").glob("*.pt"))
    assert "resnet18_half_resolution_protected_seed0.pt" in saved and "resnet18_mix25_clean_part_seed0.pt" in saved
    import torch

    half = torch.jit.load(str(tmp_path / "models" / "resnet18_half_resolution_protected_seed0.pt"))
    assert tuple(half(torch.rand(3, 1, 16, 16)).shape) == (3, 2)
    record = json.loads((tmp_path / "models" / "resnet18_half_resolution_protected_seed0.json").read_text())
    assert record["trained_on"] == "protected" and record["scale"] == 0.5
    held = json.loads((tmp_path / "work" / "private" / "holdout.local.json").read_text())["items"]
    assert len(held) == 4 and sorted(e["label"] for e in held.values()) == ["no", "no", "yes", "yes"]
    # no held-out image was fitted on, exported or listed in the manifest
    manifest = json.loads((tmp_path / "work" / "release" / "manifest.json").read_text())
    listed = json.dumps(manifest)
    assert not any(i in listed for i in held) and len(list((tmp_path / "work" / "release").glob("*.nii.gz"))) == 12
    assert not any((tmp_path / "work" / "markers" / f"{i}.json").exists() for i in held)
    assert res["dataset"]["train"] == 12 and res["dataset"]["clean_pool"] == 4
    mix = [r for r in res["rows"] if r["attack"] == "resnet18_mix25"]
    assert [r["training_data"] for r in mix] == ["clean", "protected", "clean_part"]
    assert [r["train_images"] for r in mix] == [15, 15, 3]  # 12 + 25 % of 12 clean pool images, both classes
    # the clean part alone trains for as many steps as the mix: 15 images x 1 epoch -> 3 images x 5 epochs
    assert mix[2]["epochs"] == 5 and mix[1]["epochs"] == 1
    summary = {s["attack"]: s for s in summarise(EfficacyResult.from_dict(res))}
    assert summary["resnet18_mix25"]["clean_part"] == mix[2]["clean_test_accuracy"]
    assert summary["resnet18_half_resolution"]["clean_part"] is None
    assert "clean part alone" in results_markdown(res)
    half = [r for r in res["rows"] if r["attack"] == "resnet18_half_resolution"]
    assert half and all(r["scale"] == 0.5 for r in half)


def test_resample_halves_and_doubles():
    from medue.efficacy.release import resample

    x = np.full((2, 8, 8), 255, dtype=np.uint8)
    x[:, :, :4] = 0
    half, double = resample(x, 0.5), resample(x, 2.0)
    assert half.shape == (2, 4, 4) and double.shape == (2, 16, 16)
    assert np.allclose(half[:, :, :2], 0) and np.allclose(half[:, :, 2:], 1)


def test_release_without_labels_and_gate_skew_is_reported(tmp_path):
    images, labels = _sample_images(6, 16)
    root = tmp_path / "set"
    write_image_set(root, images, labels, ["no", "yes"], fmt="nifti", name="tiny")
    cfg = parse_config({**_fast_config().to_dict(), "fidelity": {"min_psnr_db": 99, "min_ssim": 0.5}})
    settings = ReleaseEvalSettings(attacks=("plain_cnn", "resnet18_mix10"), seeds=(0,), epochs=1, width=4,
                                   device="cpu")
    res = evaluate_release(cfg, root, work=tmp_path / "work", labels_used=False, settings=settings,
                           log=lambda s: None)
    assert res["labels_used"] is False and res["exported"] == {"no": 0, "yes": 0}
    assert res["not_exported"] == {"gate_failed": 10} and res["release_exit_code"] == 3
    assert [r["training_data"] for r in res["rows"]] == ["clean"]  # nothing released: no protected row
    assert res["not_run"] and res["not_run"][0].startswith("resnet18_mix10")  # no labels: no held-out pool


def test_settings_validation_lists_every_problem():
    with pytest.raises(InvalidConfigError) as err:
        ReleaseEvalSettings(attacks=("vgg",), epochs=0, seeds=(), mix_pool=1.5).validate()
    text = str(err.value)
    assert "vgg" in text and "epochs" in text and "seed" in text and "mix_pool" in text


def test_self_evaluation_tests_on_held_out_items_never_released_and_the_report_names_it_own(tmp_path, capsys):
    from medue.cli import EXIT_OK, main

    path = _site(tmp_path, 10)
    root = tmp_path / "site"
    assert main(["evaluate", str(path), "--self", "--holdout", "0.2", "--attacks", "plain_cnn", "--epochs", "1",
                 "--seeds", "0", "--device", "cpu"]) == EXIT_OK
    out = tmp_path / "out"
    held = json.loads((out / "private" / "holdout.local.json").read_text())["items"]
    assert len(held) == 4  # 20 % of each class of 10
    released = list((out / "release").glob("*.nii.gz"))
    assert len(released) == 16 and not any((out / "markers" / f"{i}.json").exists() for i in held)
    assert not any(i in (out / "release" / "manifest.json").read_text() for i in held)
    held_files = {Path(p).name for e in held.values() for p in e["paths"]}
    originals = {f.name: np.asarray(nib.load(f).dataobj) for f in (root / "train").iterdir() if f.name in held_files}
    for f in released:  # no released file is a held-out image, protected or not
        data = np.asarray(nib.load(f).dataobj).astype(int)
        assert all(np.abs(data - o.astype(int)).max() > 8 or data.shape != o.shape for o in originals.values())

    res = json.loads((out / "private" / "self_evaluation.json").read_text())
    assert res["self_evaluation"] and res["dataset"]["test"] == 4 and res["dataset"]["train"] == 16
    assert res["complete"] and {r["attack"] for r in res["rows"]} == {"plain_cnn"}
    assert json.loads((out / "release" / "report.json").read_text())["summary"]["held_out"] == 4
    report = json.loads((out / "release" / "report.json").read_text())
    verdict = report["efficacy_verdict"]
    assert verdict["own"] and verdict["applies"]
    assert "Evidence: this release's own." in (out / "release" / "report.html").read_text()
    capsys.readouterr()
    main(["report", str(out)])
    assert "efficacy evidence: this release's own held-out items" in capsys.readouterr().out


def test_a_refused_self_evaluation_of_a_finished_release_changes_nothing(tmp_path, capsys):
    """evaluate --self --holdout on a release made without a held-out part: refused (exit 2) before any write, and
    no MLflow run is left behind; a plain run afterwards still works."""
    import hashlib

    from medue.cli import main

    path = _site(tmp_path, 6, tracking={"enabled": True, "uri": f"sqlite:///{tmp_path / 'mlruns.db'}"})
    assert main(["run", str(path), "--quiet"]) == 0

    def snapshot():
        return {str(f.relative_to(tmp_path)): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(tmp_path.rglob("*")) if f.is_file() and "mlartifacts" not in f.parts}

    def tracked_runs():
        import mlflow

        client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
        return [(r.info.run_id, r.info.status) for e in client.search_experiments()
                for r in client.search_runs([e.experiment_id])]

    before, runs = snapshot(), tracked_runs()
    capsys.readouterr()
    assert main(["evaluate", str(path), "--self", "--holdout", "0.2", "--attacks", "plain_cnn", "--epochs", "1",
                 "--seeds", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "resuming would mix two protections" in err and "nothing was changed" in err
    assert snapshot() == before and tracked_runs() == runs
    assert main(["run", str(path), "--resume", "--quiet"]) == 0


def test_a_self_evaluation_reads_a_float_release_back_in_its_unit(tmp_path):
    """A site whose images are float (HU saved as float32) releases with protect.unit; its self-evaluation reads the
    released and the held-out files in that unit (it could not before: every float file was refused)."""
    from medue.cli import EXIT_OK, main

    path = _site(tmp_path, 10, float_images=True, unit=1.0)
    assert main(["evaluate", str(path), "--self", "--holdout", "0.2", "--attacks", "plain_cnn", "--epochs", "1",
                 "--seeds", "0", "--device", "cpu"]) == EXIT_OK
    res = json.loads((tmp_path / "out" / "private" / "self_evaluation.json").read_text())
    assert res["dataset"]["train"] == 16 and res["dataset"]["test"] == 4


def test_a_small_training_set_recalibrates_batchnorm_so_a_fitted_model_is_not_scored_at_chance(monkeypatch):
    """~24 optimiser steps leave BatchNorm's running statistics far from the data: the model then scores at chance in
    eval mode although its batches were right. Below BN_RECALIBRATION_STEPS they are recomputed after training."""
    import torch
    import torch.optim.swa_utils

    from medue.efficacy.train import BN_RECALIBRATION_STEPS, TrainSettings, train_classifier

    calls = []
    real = torch.optim.swa_utils.update_bn
    monkeypatch.setattr(torch.optim.swa_utils, "update_bn", lambda loader, model: calls.append(1) or real(loader, model))
    x, y = _sample_images(48, 16)
    res = train_classifier("resnet18", x, y, x, y, settings=TrainSettings(epochs=6, width=4), seed=0,
                           device=torch.device("cpu"))
    assert calls and 6 * 1 < BN_RECALIBRATION_STEPS
    assert res["train_accuracy"] > 0.7  # 0.60 without the recalibration (measured), 0.79 with it
