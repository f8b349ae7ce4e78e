"""Efficacy of a RELEASE: what ``medue run`` wrote, read back from ``release/`` and attacked with the true labels.

``evaluate_release`` runs the exact release code (:func:`medue.pipeline.runner.run_pipeline`) on the training
split of a labelled benchmark set (:mod:`medue.efficacy.dataset`), reads every exported file back with medue's
readers, and trains unauthorised models on them with the *true* labels. Test images are read from the set's
``test/`` folder and are never protected. Every protected row is repeated for each seed, every countermeasure is
also run on clean data (its baseline), and a row whose model did not fit its own training set
(``train_accuracy < min_train_accuracy``) is flagged ``fit: false`` and left out of the summary.

Nothing the release did not export is trained on: gate failures and quarantined items are counted per class in
``exported`` / ``expected``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medue.device import derive_seed, resolve_device
from medue.efficacy import countermeasures
from medue.efficacy.train import TrainSettings, predict, train_classifier
from medue.errors import IngestError, InvalidConfigError
from medue.fidelity.diagnostic import diagnostic_preservation

RESULT_SCHEMA = "medue.release_efficacy/1"

#: The attackers of the release benchmark and the augmentation each trains with.
DEFAULT_ATTACKERS: tuple[tuple[str, str], ...] = (("resnet18", "flip_crop"), ("densenet121", "flip_crop"),
                                                  ("plain_cnn", "none"))
#: Countermeasures applied to the released training images (or to training), each also run on clean data.
DEFAULT_COUNTERMEASURES = ("jpeg_q10", "bit_depth_3", "median_3x3", "adversarial_training")


@dataclasses.dataclass(frozen=True)
class ReleaseEvalSettings:
    """What to train: attackers, countermeasures (on ``countermeasure_attacker``), seeds and epochs."""

    attackers: tuple[tuple[str, str], ...] = DEFAULT_ATTACKERS
    countermeasures: tuple[str, ...] = DEFAULT_COUNTERMEASURES
    countermeasure_attacker: tuple[str, str] = ("resnet18", "flip_crop")
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 12
    width: int = 16
    adversarial_epsilon: float = 2 / 255
    min_train_accuracy: float = 0.98
    device: str = "auto"

    def validate(self) -> None:
        from medue.efficacy.attackers import ATTACKERS

        problems = []
        for arch, aug in (*self.attackers, self.countermeasure_attacker):
            if arch not in ATTACKERS:
                problems.append(f"unknown attacker {arch!r}; available: {', '.join(ATTACKERS)}")
            if aug not in ("none", "flip_crop"):
                problems.append(f"augmentation {aug!r} for {arch}: expected 'none' or 'flip_crop'")
        for c in self.countermeasures:
            if c not in DEFAULT_COUNTERMEASURES:
                problems.append(f"unknown countermeasure {c!r}; available: {', '.join(DEFAULT_COUNTERMEASURES)}")
        if not self.seeds:
            problems.append("at least one seed is needed")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if problems:
            raise InvalidConfigError(problems, source="evaluate")


def _read_file_slices(kind: str, paths: Sequence[str]) -> np.ndarray:
    """Stored units ``(z, y, x)`` of one file / series, through medue's own readers (as the attacker sees them)."""
    from medue.io import InputItem, read_item

    vol = read_item(InputItem(kind, tuple(paths), "eval"), deidentification="ignore")
    return vol.array


def read_labels_table(path: Path) -> dict[str, str]:
    """``{relative path: class name}`` of a benchmark set's ``path,label`` table (:func:`medue.labels.read_label_table`).

    Raises:
        InvalidConfigError: every problem of the table at once.
    """
    from medue.labels import read_label_table

    rows, problems = read_label_table(path, "path", "label")
    if problems:
        raise InvalidConfigError(problems, source=str(path))
    return rows


def _kind_of(path: Path) -> str:
    from medue.io import itk, nifti

    return "nifti" if nifti.is_nifti(path) else "itk" if itk.is_itk(path) else "dicom"


def _as_uint8(arrays: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Stack slices as uint8 ``(N, H, W)`` at ``size``: 8-bit data as is, other data min-max scaled per slice."""
    out = []
    for a in arrays:
        for s in a:
            s = np.asarray(s)
            if s.dtype != np.uint8:
                lo, hi = float(s.min()), float(s.max())
                s = np.clip(np.rint((s.astype(np.float64) - lo) / max(hi - lo, 1e-9) * 255), 0, 255).astype(np.uint8)
            if s.shape != size:
                t = torch.from_numpy(s.astype(np.float32))[None, None]
                s = np.clip(np.rint(F.interpolate(t, size=size, mode="area")[0, 0].numpy()), 0, 255).astype(np.uint8)
            out.append(s)
    return np.stack(out) if out else np.zeros((0, *size), dtype=np.uint8)


def load_split(root: Path, split: str, classes: list[str]) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Clean images of one split of a benchmark set (per file), their class indices and relative paths."""
    table = read_labels_table(root / f"{split}_labels.csv")
    rels = sorted(table)
    arrays = [_read_file_slices(_kind_of(root / split / r), [str(root / split / r)]) for r in rels]
    return arrays, np.array([classes.index(table[r]) for r in rels]), rels


def read_release(output: Path, input_root: Path, labels_table: dict[str, str], classes: list[str]
                 ) -> tuple[dict[str, np.ndarray], dict[str, int], dict[str, dict[str, Any]]]:
    """Read back every item a release exported (benchmark sets hold one image file per item; items made of
    several files, such as multi-file DICOM series, are not matched to the labels table and count as not exported).

    Returns ``{relative input path: protected array}``, ``{relative input path: class}`` of every input the
    release was given, and ``{relative input path: marker}`` (status, reason, fidelity) for all of them.
    """
    index = json.loads((output / "private" / "inputs.local.json").read_text())
    released: dict[str, np.ndarray] = {}
    status: dict[str, dict[str, Any]] = {}
    for marker_path in sorted((output / "markers").glob("*.json")):
        m = json.loads(marker_path.read_text())
        paths = index.get(m["item_id"], {}).get("paths", [])
        if len(paths) != 1:
            continue
        rel = Path(paths[0]).resolve().relative_to(input_root.resolve()).as_posix()
        status[rel] = m
        if m.get("status") == "done":
            files = [output / "release" / o["path"] for o in m.get("outputs", [])]
            released[rel] = _read_file_slices(_kind_of(files[0]), [str(f) for f in files])
    expected = {rel: classes.index(lab) for rel, lab in labels_table.items()}
    return released, expected, status


def _fidelity_summary(status: dict[str, dict[str, Any]]) -> dict[str, Any]:
    fids = [m["fidelity"] for m in status.values() if m.get("status") == "done" and "fidelity" in m]
    if not fids:
        return {}
    def col(k: str) -> np.ndarray:
        return np.array([f[k] for f in fids if f.get(k) is not None], dtype=float)
    psnr = col("psnr_db")
    psnr = psnr[np.isfinite(psnr)]
    return {
        "images": len(fids),
        "psnr_db": {"min": round(float(psnr.min()), 2) if psnr.size else None,
                    "mean": round(float(psnr.mean()), 2) if psnr.size else None},
        "ssim": {"min": round(float(col("ssim").min()), 4), "mean": round(float(col("ssim").mean()), 4)},
        "fraction_changed": {"max": round(float(col("fraction_changed").max()), 4),
                             "mean": round(float(col("fraction_changed").mean()), 4)},
        "max_abs_units": int(col("max_abs_units").max()),
        "unchanged_images": int(sum(1 for f in fids if not f.get("fraction_changed"))),
    }


def evaluate_release(config: Any, dataset_root: str | Path, *, work: str | Path, labels_used: bool = True,
                     settings: ReleaseEvalSettings = ReleaseEvalSettings(), name: str | None = None,
                     log: Callable[[str], None] = print, existing: bool = False,
                     clean_from: dict[str, Any] | None = None) -> dict[str, Any]:
    """Release the training split of ``dataset_root`` with ``config`` and attack the released files.

    Args:
        config: The :class:`~medue.pipeline.config.PipelineConfig` under test; its input, output and labels are
            replaced by the benchmark's training folder, ``work`` and (with ``labels_used``) its labels table.
        dataset_root: A set written by :func:`medue.efficacy.dataset.write_image_set`.
        work: Output folder of the release run (kept: it is the evidence).
        labels_used: Give the release the true labels (``False``: the label-agnostic path; attackers still train
            with the true labels).
        existing: ``work`` already holds a release of ``dataset_root/train`` that ``medue run`` wrote (for
            example by an earlier medue version): read it back instead of running the release.
        clean_from: An earlier result on the same dataset with the same epochs and width: its clean-data rows are
            reused (marked ``reused_from``) instead of retrained, for screening many releases against one baseline.

    Returns:
        The JSON-ready result (schema ``medue.release_efficacy/1``; see ``benchmarks/results/README.md``).
    """
    from medue.pipeline.config import LabelsConfig
    from medue.pipeline.runner import run_pipeline

    settings.validate()
    root = Path(dataset_root)
    info = json.loads((root / "dataset.json").read_text())
    reused = _reusable_clean_rows(clean_from, info, root, settings) if clean_from else {}
    classes = list(info["classes"])
    size = tuple(info["image_size"])
    device = resolve_device(settings.device)
    work = Path(work)
    labels_cfg = (LabelsConfig(source="table", table=str((root / "train_labels.csv").resolve()))
                  if labels_used else LabelsConfig())
    run_cfg = config.model_copy(update=dict(input=str((root / "train").resolve()), output=str(work.resolve()),
                                  labels=labels_cfg,
                                  report=config.report.model_copy(update={"efficacy_results": None})))
    t0 = time.perf_counter()
    if existing:
        log(f"reading the existing release in {work} (not re-run)")
        exit_code = None
    else:
        log(f"release: {config.protect.method} {dict(config.protect.params)} on {root.name}/train "
            f"({'true labels' if labels_used else 'no labels'}) -> {work}")
        exit_code = run_pipeline(run_cfg, progress=log).exit_code
    release_seconds = round(time.perf_counter() - t0, 1)
    fit_info = json.loads((work / "private" / "protector.json").read_text())

    train_table = read_labels_table(root / "train_labels.csv")
    released, expected, status = read_release(work, root / "train", train_table, classes)
    clean_arrays, y_clean, rels = load_split(root, "train", classes)
    test_arrays, y_test, _ = load_split(root, "test", classes)
    x_clean = _as_uint8(clean_arrays, size)
    x_test = _as_uint8(test_arrays, size)
    exported_rels = [r for r in rels if r in released]
    x_prot = _as_uint8([released[r] for r in exported_rels], size)
    y_prot = np.array([expected[r] for r in exported_rels], dtype=np.int64)
    per_class = {c: {"expected": int(sum(1 for r in rels if expected[r] == i)),
                     "exported": int(sum(1 for r in exported_rels if expected[r] == i))} for i, c in enumerate(classes)}
    not_exported: dict[str, int] = {}
    for r in rels:
        if r not in released:
            why = (status.get(r) or {}).get("status", "missing")
            reason = (status.get(r) or {}).get("reason") or ""
            key = f"{why}:{reason}" if reason else why
            not_exported[key] = not_exported.get(key, 0) + 1
    log(f"read back {len(exported_rels)}/{len(rels)} released training images; per class {per_class}; "
        f"test {len(x_test)} clean images")

    rows: list[dict[str, Any]] = []
    clean_models: dict[str, torch.nn.Module] = {}

    def train_row(arch: str, aug: str, cm: str, data: str, seed: int) -> dict[str, Any]:
        x, y = (x_clean, y_clean) if data == "clean" else (x_prot, y_prot)
        ts = TrainSettings(epochs=settings.epochs, width=settings.width, augmentation=(aug == "flip_crop"),
                           adversarial_epsilon=settings.adversarial_epsilon if cm == "adversarial_training" else 0.0)
        x = countermeasures.PREPROCESSING.get(cm, lambda a: a)(x)
        t = time.perf_counter()

        def epoch_done(epoch: int, epochs: int, loss: float, batch_accuracy: float) -> None:
            log(f"    {arch} {cm} {data} seed {seed}: epoch {epoch}/{epochs}, loss {loss:.4f}, "
                f"training-batch accuracy {batch_accuracy:.3f}, {time.perf_counter() - t:.0f} s")

        res, model = train_classifier(arch, x, y, x_test, y_test, settings=ts, seed=derive_seed(seed, arch, cm),
                                      device=device, return_model=True, progress=epoch_done)
        row = {"architecture": arch, "augmentation": aug, "countermeasure": cm, "training_data": data,
               "seed": seed, "train_accuracy": round(res["train_accuracy"], 4),
               "clean_test_accuracy": round(res["test_accuracy"], 4), "epochs": settings.epochs,
               "seconds": round(time.perf_counter() - t, 1),
               "fit": bool(res["train_accuracy"] >= settings.min_train_accuracy)}
        if cm == "adversarial_training":
            row["adversarial_epsilon"] = round(settings.adversarial_epsilon, 5)
        if data == "clean" and cm == "none" and seed == settings.seeds[0]:
            clean_models[arch] = model
        log(f"  {arch:12s} {aug:9s} {cm:20s} {data:9s} seed {seed}: clean-test {row['clean_test_accuracy']:.3f} "
            f"(train {row['train_accuracy']:.3f}{'' if row['fit'] else ', DID NOT FIT'}) {row['seconds']} s")
        return row

    plan = [(arch, aug, "none") for arch, aug in settings.attackers]
    plan += [(*settings.countermeasure_attacker, cm) for cm in settings.countermeasures]
    for arch, aug, cm in plan:
        if (arch, aug, cm) in reused:
            origin = clean_from.get("file", clean_from.get("name"))  # type: ignore[union-attr]
            rows.append({**reused[(arch, aug, cm)], "reused_from": origin})
            log(f"  {arch:12s} {aug:9s} {cm:20s} clean     reused from {origin}")
        else:
            rows.append(train_row(arch, aug, cm, "clean", settings.seeds[0]))
        if len(x_prot):
            for seed in settings.seeds:
                rows.append(train_row(arch, aug, cm, "protected", seed))

    diagnostic = {}
    originals = x_clean[[rels.index(r) for r in exported_rels]] if exported_rels else x_clean[:0]
    for arch, model in clean_models.items():
        if len(x_prot):
            diagnostic[arch] = diagnostic_preservation(y_prot, predict(model, originals, device),
                                                       predict(model, x_prot, device),
                                                       max_accuracy_drop=config.fidelity.max_diagnostic_accuracy_drop)
    return {
        "schema": RESULT_SCHEMA,
        "name": name or f"{info.get('name', root.name)}_{config.protect.method}",
        "dataset": {"name": info.get("name", root.name), "root": root.name, "format": info.get("format"),
                    "origin": info.get("origin", ""), "train": len(rels), "test": int(len(x_test)),
                    "classes": classes, "split_seed": info.get("split_seed"),
                    "majority_class_accuracy": round(float(np.bincount(y_test).max() / len(y_test)), 4)},
        "image_size": list(size),
        "method": config.protect.method,
        "params": fit_info.get("params", {}),
        "config": {"fit_max_slices": config.protect.fit_max_slices, "fit_size": config.protect.fit_size,
                   "fidelity": config.fidelity.model_dump()},
        "labels_used": bool(labels_used),
        "exported": {c: v["exported"] for c, v in per_class.items()},
        "expected": {c: v["expected"] for c, v in per_class.items()},
        "not_exported": not_exported,
        "release_exit_code": exit_code,
        "release_existing": existing,
        "release_seconds": release_seconds,
        "fit": {k: fit_info.get(k) for k in ("slices", "fit_resolution", "fit_seconds", "labels_used", "pixels_used",
                                              "surrogate_accuracy_per_round", "state_fingerprint")},
        "fidelity": _fidelity_summary(status),
        "device": str(device),
        "torch": torch.__version__,
        "settings": dataclasses.asdict(settings),
        "rows": rows,
        "diagnostic": diagnostic,
    }


def _reusable_clean_rows(earlier: dict[str, Any], info: dict[str, Any], root: Path,
                         settings: ReleaseEvalSettings) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Clean-data rows of ``earlier`` keyed by (architecture, augmentation, countermeasure), after checking that
    they were trained on this dataset with the same epochs, width and adversarial budget."""
    problems = []
    if earlier.get("schema") != RESULT_SCHEMA:
        problems.append(f"clean rows: expected a {RESULT_SCHEMA} result, found schema {earlier.get('schema')!r}")
    ds = earlier.get("dataset", {})
    if ds.get("name") != info.get("name", root.name) or ds.get("train") != len(read_labels_table(
            root / "train_labels.csv")):
        problems.append(f"clean rows: result {earlier.get('name')!r} is of dataset {ds.get('name')!r} "
                        f"({ds.get('train')} training images), not of {info.get('name', root.name)!r}")
    theirs = earlier.get("settings", {})
    for key in ("epochs", "width", "adversarial_epsilon"):
        if theirs.get(key) != getattr(settings, key):
            problems.append(f"clean rows: {key} was {theirs.get(key)!r} there, {getattr(settings, key)!r} here; "
                            "rerun without reusing clean rows or with the same setting")
    if problems:
        raise InvalidConfigError(problems, source="evaluate")
    # a result trains one clean baseline per row (at its first seed), so its clean rows serve any seeds here (a
    # reused row keeps its own seed, so the record says which model it was)
    first = (theirs.get("seeds") or [None])[0]
    return {(r["architecture"], r["augmentation"], r["countermeasure"]): r for r in earlier.get("rows", [])
            if r.get("training_data") == "clean" and (first is None or r.get("seed") == first)}


def summarise(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per (architecture, augmentation, countermeasure): clean baseline and protected mean/max."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in result["rows"]:
        g = groups.setdefault((r["architecture"], r["augmentation"], r["countermeasure"]),
                              {"clean": [], "protected": [], "unfit": 0})
        if not r["fit"]:
            g["unfit"] += 1
            continue
        g[r["training_data"]].append(r)
    out = []
    for (arch, aug, cm), g in groups.items():
        prot = [r["clean_test_accuracy"] for r in g["protected"]]
        clean = [r["clean_test_accuracy"] for r in g["clean"]]
        out.append({"architecture": arch, "augmentation": aug, "countermeasure": cm,
                    "clean": round(float(np.mean(clean)), 4) if clean else None,
                    "protected_mean": round(float(np.mean(prot)), 4) if prot else None,
                    "protected_max": round(float(np.max(prot)), 4) if prot else None,
                    "protected_runs": len(prot), "unfit_runs": g["unfit"]})
    return out


def results_markdown(result: dict[str, Any]) -> str:
    """Markdown twin of a release-efficacy result."""
    d, f = result["dataset"], result.get("fidelity") or {}
    lines = [f"# Release efficacy: {result['name']}", "",
             f"Dataset **{d['name']}** ({d['format']}, {result['image_size'][0]}x{result['image_size'][1]} px, "
             f"{d['train']} train / {d['test']} test, split seed {d['split_seed']}; majority class "
             f"{d['majority_class_accuracy']:.3f}). Method **{result['method']}**, labels given to the release: "
             f"**{'yes' if result['labels_used'] else 'no'}**. Attackers always train with the true labels on the "
             f"files the release wrote, and are tested on clean held-out images. Device {result['device']}.", "",
             f"Parameters: `{json.dumps(result['params'], sort_keys=True)}`", "",
             "Exported / expected per class: " + ", ".join(f"{c} {result['exported'][c]}/{result['expected'][c]}"
                                                          for c in result["expected"])
             + (f"; not exported: {result['not_exported']}" if result["not_exported"] else "") + ".", ""]
    if f:
        lines += [f"Fidelity over {f['images']} exported images: PSNR min {f['psnr_db']['min']} / mean "
                  f"{f['psnr_db']['mean']} dB, SSIM min {f['ssim']['min']} / mean {f['ssim']['mean']}, fraction "
                  f"changed max {f['fraction_changed']['max']} / mean {f['fraction_changed']['mean']}, max |delta| "
                  f"{f['max_abs_units']} units. "
                  + ("Release read back from an existing output folder (not re-run here)"
                     if result.get("release_existing") else f"Release run {result['release_seconds']} s")
                  + f" (fit {result['fit'].get('fit_seconds')} s "
                  + ("from the labels alone, no pixels read)."
                     if result['fit'].get('pixels_used') is False else f"on {result['fit'].get('slices')} slices)."),
                  ""]
    lines += ["## Summary (clean-test accuracy; rows whose model did not fit its training set are left out)", "",
              "| attacker | augmentation | countermeasure | clean data | protected (mean) | protected (max) | runs | "
              "unfit |", "|---|---|---|---|---|---|---|---|"]
    fmt = (lambda v: "not tested" if v is None else f"{v:.3f}")
    for s in summarise(result):
        lines.append(f"| {s['architecture']} | {s['augmentation']} | {s['countermeasure']} | {fmt(s['clean'])} | "
                     f"{fmt(s['protected_mean'])} | {fmt(s['protected_max'])} | {s['protected_runs']} | "
                     f"{s['unfit_runs']} |")
    lines += ["", "## Every run", "", "| attacker | aug | countermeasure | data | seed | train acc | clean-test acc | "
              "fit | epochs | s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['architecture']} | {r['augmentation']} | {r['countermeasure']} | {r['training_data']} | "
                     f"{r['seed']} | {r['train_accuracy']:.3f} | {r['clean_test_accuracy']:.3f} | "
                     f"{'yes' if r['fit'] else '**no**'} | {r['epochs']} | {r['seconds']}"
                     + (f" (reused from {r['reused_from']})" if r.get("reused_from") else "") + " |")
    if result.get("diagnostic"):
        lines += ["", "## Diagnostic content (clean-trained model reading released vs original training images)", "",
                  "| attacker | accuracy on originals | on released | drop | agreement | passed |",
                  "|---|---|---|---|---|---|"]
        for arch, dg in result["diagnostic"].items():
            lines.append(f"| {arch} | {dg['accuracy_original']:.3f} | {dg['accuracy_protected']:.3f} | "
                         f"{dg['accuracy_drop']:+.3f} | {dg['agreement']:.3f} | {dg['passed']} |")
    return "\n".join(lines) + "\n"


__all__ = ["DEFAULT_ATTACKERS", "DEFAULT_COUNTERMEASURES", "RESULT_SCHEMA", "ReleaseEvalSettings",
           "evaluate_release", "read_release", "results_markdown", "summarise", "IngestError"]
