"""Efficacy audit: does protection stop an unauthorised model from learning, also under countermeasures?

Train models on protected vs clean training images of a labelled 2D set and report clean-test accuracy.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medue.device import derive_seed, make_generator, resolve_device
from medue.efficacy import countermeasures
from medue.efficacy.train import ARCHITECTURES, TrainSettings, predict, train_classifier
from medue.errors import InvalidConfigError
from medue.fidelity.metrics import compute_psnr, compute_ssim, fraction_changed, max_abs_diff
from medue.fidelity.diagnostic import diagnostic_preservation
from medue.protect import PROTECTORS, Protector, UnitSpace, build_protector


@dataclass(frozen=True)
class EfficacyConfig:
    """What to evaluate. ``methods`` maps protector keys to their parameters."""

    dataset: str = "sample_data/classification/br35h_64.npz"
    image_size: int = 32
    test_fraction: float = 0.2
    seed: int = 0
    key: str = "efficacy-evaluation-key"
    device: str = "auto"
    methods: dict[str, dict[str, Any]] = field(default_factory=lambda: {m: {} for m in ("salm", "em", "sem", "conv", "uc")})
    architectures: tuple[str, ...] = ("resnet18", "monai_classifier")
    countermeasures: tuple[str, ...] = countermeasures.ALL
    countermeasure_architecture: str = "resnet18"
    train: TrainSettings = TrainSettings()
    adversarial_epsilon: float = 4 / 255
    max_diagnostic_accuracy_drop: float = 0.02

    def validate(self) -> None:
        problems = []
        for m in self.methods:
            if m not in PROTECTORS:
                problems.append(f"unknown method {m!r}; available: {', '.join(PROTECTORS.keys())}")
        for a in (*self.architectures, self.countermeasure_architecture):
            if a not in ARCHITECTURES:
                problems.append(f"unknown architecture {a!r}; available: {', '.join(ARCHITECTURES)}")
        for c in self.countermeasures:
            if c not in countermeasures.ALL:
                problems.append(f"unknown countermeasure {c!r}; available: {', '.join(countermeasures.ALL)}")
        if not 0 < self.test_fraction < 1:
            problems.append(f"test_fraction must be in (0, 1), not {self.test_fraction}")
        if not 0.0 <= self.max_diagnostic_accuracy_drop <= 1.0:
            problems.append(f"max_diagnostic_accuracy_drop must be in [0, 1], not {self.max_diagnostic_accuracy_drop}")
        if self.image_size < 8:
            problems.append(f"image_size must be >= 8, not {self.image_size}")
        if problems:
            raise InvalidConfigError(problems, source="efficacy config")


def load_classification_set(path: str | Path, image_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load an ``.npz`` with ``images`` (N, H, W) uint8 and ``labels`` (N,), area-resized to ``image_size``."""
    with np.load(path) as data:
        images, labels = data["images"], data["labels"].astype(np.int64)
        names = [str(n) for n in data["class_names"]] if "class_names" in data else [str(i) for i in np.unique(labels)]
    if images.shape[-1] != image_size:
        t = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
        images = torch.round(F.interpolate(t, size=(image_size, image_size), mode="area")).squeeze(1).numpy()
        images = np.clip(images, 0, 255).astype(np.uint8)
    return images, labels, names


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * test_fraction))
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(np.asarray(train)), np.sort(np.asarray(test))


#: 8-bit images are their own stored units: value range 0..255, no rescale.
UINT8_SPACE = UnitSpace(0.0, 255.0, 0.0, 255.0)


def _to_units(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 ``(N, H, W)`` -> float ``(N, 1, H, W)`` stored units on ``device``."""
    return torch.from_numpy(images.astype(np.float32)).unsqueeze(1).to(device)


def _to_uint8(x_units: torch.Tensor) -> np.ndarray:
    """Float ``(N, 1, H, W)`` stored units -> uint8 ``(N, H, W)``, rounded and clipped."""
    return np.clip(np.rint(x_units.squeeze(1).cpu().numpy()), 0, 255).astype(np.uint8)


def load_splits(config: EfficacyConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(x_train, y_train, x_test, y_test, class_names)`` of ``config.dataset`` at ``config.image_size``."""
    images, labels, class_names = load_classification_set(config.dataset, config.image_size)
    tr, te = stratified_split(labels, config.test_fraction, config.seed)
    return images[tr], labels[tr], images[te], labels[te], class_names


def protect_dataset(method: str, params: dict[str, Any], images: np.ndarray, labels: np.ndarray, *, key: str,
                    device: torch.device) -> tuple[np.ndarray, dict[str, Any], Protector]:
    """Fit ``method`` on uint8 images; return the protected images, fidelity and speed numbers, and the protector."""
    protector = build_protector(method, **params)
    x = _to_units(images, device)
    y = torch.from_numpy(labels).to(device)
    gen = make_generator(derive_seed(key, "efficacy", method))
    t0 = time.perf_counter()
    delta = protector.fit(x, y, UINT8_SPACE, generator=gen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    protected = _to_uint8(x + delta)
    stats = {
        "params": protector.params(),
        "fit_seconds": round(seconds, 2),
        "images_per_second": round(len(images) / seconds, 2) if seconds > 0 else None,
        "psnr_db": round(compute_psnr(images, protected, data_range=255), 2),
        "ssim": round(compute_ssim(images, protected, data_range=255), 4),
        "linf_units": max_abs_diff(images, protected),
        "fraction_changed": round(fraction_changed(images, protected), 4),
        "surrogate_rounds": len(getattr(protector, "history", []) or []),
    }
    return protected, stats, protector


def protect_new_images(protector: Protector, images: np.ndarray, labels: np.ndarray, *, key: str,
                       device: torch.device) -> np.ndarray:
    """Apply a fitted protector to images it was not fitted on (held-out test images of a release).

    Methods that work without labels get none (as in the release pipeline); class-wise ones get ``labels``.
    """
    x = _to_units(images, device)
    y = torch.from_numpy(labels).to(device) if protector.needs_labels else None
    delta = protector.perturb(x, y, UINT8_SPACE, generator=make_generator(derive_seed(key, "efficacy-held-out")))
    return _to_uint8(x + delta)


def run_efficacy(config: EfficacyConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole audit and return a JSON-ready result dict (see ``results`` / ``countermeasures`` keys)."""
    config.validate()
    device = resolve_device(config.device)
    x_tr, y_tr, x_te, y_te, class_names = load_splits(config)
    chance = float(np.bincount(y_te).max() / len(y_te))
    log(f"dataset {Path(config.dataset).name}: {len(x_tr)} train / {len(x_te)} test, {len(class_names)} classes, "
        f"majority-class accuracy {chance:.3f}, device {device}")
    train_sets: dict[str, np.ndarray] = {"clean": x_tr}
    protected_test: dict[str, np.ndarray] = {}
    protection: dict[str, Any] = {}
    for method, params in config.methods.items():
        log(f"protecting training set with {method} …")
        train_sets[method], protection[method], protector = protect_dataset(method, params, x_tr, y_tr,
                                                                            key=config.key, device=device)
        protected_test[method] = protect_new_images(protector, x_te, y_te, key=config.key, device=device)
        log(f"  {method}: {protection[method]}")

    def fit(arch: str, x: np.ndarray, settings: TrainSettings, name: str) -> tuple[dict[str, float], nn.Module]:
        t0 = time.perf_counter()
        r, model = train_classifier(arch, x, y_tr, x_te, y_te, settings=settings,
                                    seed=derive_seed(config.seed, arch), device=device, return_model=True)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        log(f"  {name:>40s}: test {r['test_accuracy']:.3f} (train {r['train_accuracy']:.3f}, {r['seconds']} s)")
        return r, model

    results: dict[str, dict[str, Any]] = {}
    diagnostic: dict[str, dict[str, Any]] = {}
    for arch in config.architectures:
        log(f"training {arch} on clean and protected sets …")
        results[arch], clean_model = {}, None
        for name, x in train_sets.items():
            results[arch][name], model = fit(arch, x, config.train, f"{arch}/{name}")
            if name == "clean":  # kept for the diagnostic-content check
                clean_model = model
        original_pred = predict(clean_model, x_te, device)
        diagnostic[arch] = {m: diagnostic_preservation(y_te, original_pred, predict(clean_model, xp, device),
                                                       max_accuracy_drop=config.max_diagnostic_accuracy_drop)
                            for m, xp in protected_test.items()}
        for m, d in diagnostic[arch].items():
            log(f"  diagnostic content ({arch}, clean model): original {d['accuracy_original']:.3f}, "
                f"{m}-protected {d['accuracy_protected']:.3f}, agreement {d['agreement']:.3f}")

    cm_results: dict[str, Any] = {}
    arch = config.countermeasure_architecture
    for cm in countermeasures.ALL:
        if cm not in config.countermeasures:
            cm_results[cm] = {"status": "not tested", "reason": "not selected in the config"}
            continue
        log(f"countermeasure {cm} ({arch}) …")
        settings = config.train
        entry: dict[str, Any] = {"status": "tested", "architecture": arch}
        if cm == "grayscale":
            entry["note"] = "images are single-channel: grayscale conversion is the identity"
        if cm == "augmentation":
            settings = TrainSettings(**{**asdict(settings), "augmentation": True})
        elif cm == "adversarial_training":
            settings = TrainSettings(**{**asdict(settings), "adversarial_epsilon": config.adversarial_epsilon})
            entry["epsilon"] = round(config.adversarial_epsilon, 5)
        transform = countermeasures.PREPROCESSING.get(cm, lambda x: x)
        entry["results"] = {name: fit(arch, transform(x), settings, f"{cm}/{name}")[0]
                            for name, x in train_sets.items()}
        cm_results[cm] = entry
    return {
        "schema": "medue.efficacy/1",
        "config": {**asdict(config), "key": "(not recorded)"},
        "dataset": {"path": config.dataset, "train": int(len(x_tr)), "test": int(len(x_te)), "classes": class_names,
                    "majority_class_accuracy": chance},
        "device": str(device),
        "torch": torch.__version__,
        "protection": protection,
        "results": results,
        "diagnostic": diagnostic,
        "countermeasures": cm_results,
    }


def _cell(r: dict[str, float]) -> str:
    return f"{r['test_accuracy']:.3f} ({r['train_accuracy']:.2f})"


def results_markdown(res: dict[str, Any]) -> str:
    """Human-readable tables of a :func:`run_efficacy` result."""
    lines = [f"# Efficacy audit ({res['device']})", "",
             f"Dataset: {res['dataset']['path']} ({res['dataset']['train']} train / {res['dataset']['test']} test); "
             f"majority-class accuracy {res['dataset']['majority_class_accuracy']:.3f}.", "",
             "## Protection (training set)", "",
             "| method | PSNR dB | SSIM | max abs delta | fraction changed | images/s |", "|---|---|---|---|---|---|"]
    for m, s in res["protection"].items():
        lines.append(f"| {m} | {s['psnr_db']} | {s['ssim']} | {s['linf_units']} | {s['fraction_changed']} | "
                     f"{s['images_per_second']} |")
    lines += ["", "## Clean-test accuracy of models trained on each training set", "",
              "Each cell is clean-test accuracy (training accuracy in brackets). A training accuracy near the "
              "majority-class rate means that model failed to train at all, which says nothing about protection.", ""]
    names = list(next(iter(res["results"].values())).keys()) if res["results"] else []
    lines += ["| architecture | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for arch, r in res["results"].items():
        lines.append(f"| {arch} | " + " | ".join(_cell(r[n]) for n in names) + " |")
    if res.get("diagnostic"):
        lines += ["", "## Diagnostic content preserved (model trained on clean data, held-out images)", "",
                  "| architecture | method | accuracy on originals | accuracy on protected | drop | agreement | "
                  "passed |", "|---|---|---|---|---|---|---|"]
        for arch, per_method in res["diagnostic"].items():
            for m, d in per_method.items():
                lines.append(f"| {arch} | {m} | {d['accuracy_original']:.3f} | {d['accuracy_protected']:.3f} | "
                             f"{d['accuracy_drop']:+.3f} | {d['agreement']:.3f} | {d['passed']} |")
    lines += ["", "## Countermeasures (clean-test accuracy)", ""]
    lines += ["| countermeasure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for cm, e in res["countermeasures"].items():
        if e["status"] != "tested":
            lines.append(f"| {cm} | " + " | ".join("not tested" for _ in names) + " |")
        else:
            lines.append(f"| {cm} | " + " | ".join(_cell(e["results"][n]) for n in names) + " |")
    return "\n".join(lines) + "\n"
