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
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medue.device import derive_seed, resolve_device
from medue.efficacy import countermeasures
from medue.efficacy.suite import Attack, suite_attacks
from medue.efficacy.train import TrainSettings, predict, train_classifier
from medue.errors import IngestError, InvalidConfigError
from medue.evidence import RESULT_SCHEMA, summarise
from medue.fidelity.diagnostic import diagnostic_preservation
from medue.habits import seed_name
from medue.layout import OutputLayout
from medue.records import EfficacyResult, FitRecord, ItemMarker

#: Default fraction of a benchmark's training split kept out of the release as the clean pool of the mixing attacks.
MIX_POOL = 0.2


@dataclasses.dataclass(frozen=True)
class ReleaseEvalSettings:
    """What to train: the attacks (a suite, or named attacks of :data:`medue.efficacy.suite.CATALOGUE`), seeds and
    epochs.

    ``headline_seeds`` (empty: ``seeds``) are the seeds of the attacks marked ``headline``. ``mix_pool`` is the
    fraction of the benchmark's training split held out of the release (stratified, never released) when an attack
    mixes clean images in; the release then holds the rest.
    """

    suite: str = "standard"
    attacks: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1)
    headline_seeds: tuple[int, ...] = ()
    epochs: int = 12
    width: int = 16
    adversarial_epsilon: float = 2 / 255
    min_train_accuracy: float = 0.98
    mix_pool: float = MIX_POOL
    device: str = "auto"

    def selected(self) -> tuple[Attack, ...]:
        return suite_attacks(self.suite, self.attacks or None)

    def seeds_of(self, attack: Attack) -> tuple[int, ...]:
        return (self.headline_seeds or self.seeds) if attack.headline else self.seeds

    def validate(self) -> None:
        problems = []
        try:
            self.selected()
        except KeyError as exc:
            problems.append(str(exc.args[0]))
        if not self.seeds:
            problems.append("at least one seed is needed")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if not 0.0 < self.mix_pool < 1.0:
            problems.append(f"mix_pool must be in (0, 1), got {self.mix_pool}")
        if problems:
            raise InvalidConfigError(problems, source="evaluate")


def _read_file_slices(kind: str, paths: Sequence[str], float_unit: float | None = None) -> np.ndarray:
    """Stored units ``(z, y, x)`` of one file / series, through medue's own readers (as the attacker sees them);
    ``float_unit``: the release's ``protect.unit`` (a floating-point image is read in whole multiples of it)."""
    from medue.io import InputItem, read_item

    vol = read_item(InputItem(kind, tuple(paths), "eval"), deidentification="ignore", float_unit=float_unit)
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
    status: dict[str, ItemMarker] = {}
    for marker_path in sorted((output / "markers").glob("*.json")):
        m = ItemMarker.read(marker_path)
        if m is None:
            continue
        paths = index.get(m.item_id, {}).get("paths", [])
        if len(paths) != 1:
            continue
        rel = Path(paths[0]).resolve().relative_to(input_root.resolve()).as_posix()
        status[rel] = m
        if m.exported:
            files = [output / "release" / o["path"] for o in m.outputs or []]
            released[rel] = _read_file_slices(_kind_of(files[0]), [str(f) for f in files])
    expected = {rel: classes.index(lab) for rel, lab in labels_table.items()}
    return released, expected, status


def _fidelity_summary(status: dict[str, ItemMarker]) -> dict[str, Any]:
    fids = [m.fidelity for m in status.values() if m.exported and m.fidelity is not None]
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
        **({"max_relative_change": {"max": round(float(rel.max()), 4), "mean": round(float(rel.mean()), 4)}}
           if (rel := col("max_relative_change")).size else {}),
    }


@dataclasses.dataclass
class EvalData:
    """The images of one evaluation, uint8 ``(N, H, W)``: the release's files and the clean originals of the items
    it was given (the baselines), clean test images, and the clean pool of the mixing attacks (or none)."""

    x_prot: np.ndarray
    y_prot: np.ndarray
    x_clean: np.ndarray
    y_clean: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    originals_of_prot: np.ndarray  # the originals of x_prot, in its order (the diagnostic check)
    x_pool: np.ndarray | None = None
    y_pool: np.ndarray | None = None


def resample(x: np.ndarray, scale: float) -> np.ndarray:
    """``(N, H, W)`` images at ``scale`` times their side, float32 in [0, 1]: area averaging down, bilinear up."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float32) / (255.0 if x.dtype == np.uint8 else 1.0))[:, None]
    side = (max(1, int(round(x.shape[-2] * scale))), max(1, int(round(x.shape[-1] * scale))))
    mode = "area" if scale < 1 else "bilinear"
    out = F.interpolate(t, size=side, mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return out[:, 0].clamp_(0, 1).numpy()


def _mix_pick(y_pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices of the pool, every class in proportion to its share of the pool (largest remainders), drawn
    with ``seed``."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y_pool)
    n = min(n, len(y_pool))
    exact = np.array([n * np.sum(y_pool == c) / len(y_pool) for c in classes]) if len(classes) else np.zeros(0)
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota))[:n - int(quota.sum())]:
        quota[i] += 1
    picks = [rng.permutation(np.flatnonzero(y_pool == c))[:k] for c, k in zip(classes, quota)]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=int)


class Deployed(torch.nn.Module):
    """An attacker's model as it would be used: release-size images ``(N, 1, H, W)`` in ``[0, 1]`` in, logits out
    (resampled to the size it was trained at, as its training resampled)."""

    def __init__(self, net: torch.nn.Module, side: int, scale: float) -> None:
        super().__init__()
        self.net, self.scale = net, float(scale)
        self.trained_side = max(1, int(round(side * scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        size = (self.trained_side, self.trained_side)
        if self.scale < 1:
            x = F.interpolate(x, size=size, mode="area")
        elif self.scale > 1:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.net(x)


def save_deployed(model: torch.nn.Module, path: Path, *, side: int, scale: float, device: torch.device,
                  record: dict[str, Any]) -> None:
    """Save ``model`` as TorchScript (traced at ``side`` px) and ``record`` (what it trained on) beside it."""
    from medue.io.atomic import write_text_atomic

    wrapped = Deployed(model, side, scale).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        traced = torch.jit.trace(wrapped, torch.zeros(2, 1, side, side, device=device))
    traced.save(str(path))
    write_text_atomic(path.with_suffix(".json"), json.dumps(record, indent=2, default=str))


def run_attacks(attacks: Sequence[Attack], data: EvalData, settings: ReleaseEvalSettings, device: torch.device,
                log: Callable[[str], None], *, reused: dict[str, dict[str, Any]] | None = None,
                reused_from: str = "", on_row: Callable[[list[dict[str, Any]]], None] | None = None,
                models_dir: Path | None = None
                ) -> tuple[list[dict[str, Any]], dict[str, torch.nn.Module], list[str]]:
    """Train every attack on the clean originals (its baseline, first seed) and on the release (every seed).

    A mixing attack also trains on its mixed-in clean images alone for as many steps (``clean_part``, first seed):
    what the release adds is the mixed model's accuracy over that one. Returns the rows, the clean-trained model of
    each architecture's plain attack (for the diagnostic check) and the attacks that could not run, with why.
    ``on_row(rows)`` is called after every row (partial results). ``models_dir``: every trained model is also saved
    there as TorchScript that takes release-size images (:func:`save_deployed`), suspects for ``medue verify``.
    """
    rows: list[dict[str, Any]] = []
    clean_models: dict[str, torch.nn.Module] = {}
    not_run: list[str] = []

    def train_row(attack: Attack, data_name: str, seed: int) -> dict[str, Any]:
        x, y = (data.x_clean, data.y_clean) if data_name == "clean" else (data.x_prot, data.y_prot)
        epochs = attack.epochs or settings.epochs
        if attack.clean_mix:
            pick = _mix_pick(data.y_pool, int(round(attack.clean_mix * len(x))), derive_seed(seed, attack.name))
            if data_name == "clean_part":  # the mixed-in clean images alone, for as many steps as the mix
                epochs = int(math.ceil(epochs * (len(x) + len(pick)) / max(len(pick), 1)))
                x, y = data.x_pool[pick], data.y_pool[pick]
            else:
                x, y = np.concatenate([x, data.x_pool[pick]]), np.concatenate([y, data.y_pool[pick]])
        purification = attack.purification
        x = countermeasures.PREPROCESSING.get(purification, lambda a: a)(x)
        x_test = data.x_test
        if attack.scale != 1.0:
            x, x_test = resample(x, attack.scale), resample(x_test, attack.scale)
        ts = TrainSettings(epochs=epochs, width=settings.width, recipe=attack.recipe, optimizer=attack.optimizer,
                           lr=attack.lr,
                           adversarial_epsilon=settings.adversarial_epsilon
                           if purification == "adversarial_training" else 0.0)
        t = time.perf_counter()

        def epoch_done(epoch: int, epochs: int, loss: float, batch_accuracy: float) -> None:
            log(f"    {attack.name} {data_name} seed {seed}: epoch {epoch}/{epochs}, loss {loss:.4f}, "
                f"training-batch accuracy {batch_accuracy:.3f}, {time.perf_counter() - t:.0f} s")

        res, model = train_classifier(attack.architecture, x, y, x_test, data.y_test, settings=ts,
                                      seed=derive_seed(seed, attack.architecture, seed_name(purification)),
                                      device=device, return_model=True, progress=epoch_done)
        row = {**attack.record(), "training_data": data_name, "seed": seed, "train_images": int(len(x)),
               "train_accuracy": round(res["train_accuracy"], 4),
               "clean_test_accuracy": round(res["test_accuracy"], 4), "epochs": epochs,
               "seconds": round(time.perf_counter() - t, 1),
               "fit": bool(res["train_accuracy"] >= settings.min_train_accuracy)}
        if purification == "adversarial_training":
            row["adversarial_epsilon"] = round(settings.adversarial_epsilon, 5)
        if models_dir is not None:
            save_deployed(model, models_dir / f"{attack.name}_{data_name}_seed{seed}.pt", side=data.x_test.shape[-1],
                          scale=attack.scale, device=device, record={**row, "trained_on": data_name})
        plain = purification == "none" and attack.scale == 1.0 and not attack.clean_mix
        if data_name == "clean" and plain and attack.architecture not in clean_models:
            clean_models[attack.architecture] = model
        log(f"  {attack.name:30s} {data_name:9s} seed {seed}: clean-test {row['clean_test_accuracy']:.3f} "
            f"(train {row['train_accuracy']:.3f}{'' if row['fit'] else ', DID NOT FIT'}) {row['seconds']} s")
        return row

    for attack in attacks:
        if attack.clean_mix and (data.x_pool is None or not len(data.x_pool)):
            not_run.append(f"{attack.name} (needs clean images outside the release and the test set)")
            log(f"  {attack.name}: not run: no clean pool outside the release and the test set")
            continue
        if reused and attack.name in reused:
            rows.append({**reused[attack.name], "reused_from": reused_from})
            log(f"  {attack.name:30s} clean     reused from {reused_from}")
        else:
            rows.append(train_row(attack, "clean", settings.seeds[0]))
        if on_row:
            on_row(rows)
        if len(data.x_prot):
            seeds = settings.seeds_of(attack)
            for seed in seeds:
                rows.append(train_row(attack, "protected", seed))
                if on_row:
                    on_row(rows)
            if attack.clean_mix:  # what the release adds: the clean part alone, as many steps (first seed)
                rows.append(train_row(attack, "clean_part", seeds[0]))
                if on_row:
                    on_row(rows)
    return rows, clean_models, not_run


def _diagnostic(clean_models: dict[str, torch.nn.Module], data: EvalData, device: torch.device,
                max_drop: float | None) -> dict[str, Any]:
    if not len(data.x_prot):
        return {}
    return {arch: diagnostic_preservation(data.y_prot, predict(model, data.originals_of_prot, device),
                                          predict(model, data.x_prot, device), max_accuracy_drop=max_drop)
            for arch, model in clean_models.items()}


def _partial_writer(path: Path | None, head: dict[str, Any]) -> Callable[[list[dict[str, Any]]], None] | None:
    """After every row, ``path`` holds the result so far (``complete: false``), so a long suite leaves evidence."""
    if path is None:
        return None
    from medue.io.atomic import write_text_atomic

    def write(rows: list[dict[str, Any]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({**head, "complete": False, "rows": rows}, indent=2, default=str))

    return write


def evaluate_release(config: Any, dataset_root: str | Path, *, work: str | Path, labels_used: bool = True,
                     settings: ReleaseEvalSettings = ReleaseEvalSettings(), name: str | None = None,
                     log: Callable[[str], None] = print, existing: bool = False,
                     clean_from: EfficacyResult | None = None, clean_from_file: str | None = None,
                     partial: str | Path | None = None, models_dir: str | Path | None = None
                     ) -> dict[str, Any]:
    """Release the training split of ``dataset_root`` with ``config`` and attack the released files.

    Args:
        config: The :class:`~medue.pipeline.config.PipelineConfig` under test; its input, output and labels are
            replaced by the benchmark's training folder, ``work`` and (with ``labels_used``) its labels table.
        dataset_root: A set written by :func:`medue.efficacy.dataset.write_image_set`.
        work: Output folder of the release run (kept: it is the evidence).
        labels_used: Give the release the true labels (``False``: the label-agnostic path; attackers still train
            with the true labels).
        settings: The attacks, seeds and epochs. When an attack mixes clean images in, the release holds out
            ``settings.mix_pool`` of each class (``labels.holdout``): those images are never released and are the
            attackers' clean pool; test images come from the set's ``test/`` split and are never protected or mixed.
        existing: ``work`` already holds a release of ``dataset_root/train`` that ``medue run`` wrote (for
            example by an earlier medue version): read it back instead of running the release.
        clean_from: An earlier result on the same dataset with the same epochs and width: its clean-data rows are
            reused (marked ``reused_from``) instead of retrained, for screening many releases against one baseline.
        partial: A JSON file rewritten after every trained row with the result so far.

    Returns:
        The JSON-ready result (schema ``medue.release_efficacy/1``; see ``benchmarks/results/README.md``).
    """
    from medue.pipeline.config import LabelsConfig
    from medue.pipeline.runner import run_pipeline

    settings.validate()
    attacks = settings.selected()
    root = Path(dataset_root)
    info = json.loads((root / "dataset.json").read_text())
    reused = _reusable_clean_rows(clean_from, info, root, settings) if clean_from else {}
    classes = list(info["classes"])
    size = tuple(info["image_size"])
    device = resolve_device(settings.device)
    work = Path(work)
    mixing = labels_used and any(a.clean_mix for a in attacks)
    labels_cfg = (LabelsConfig(source="table", table=str((root / "train_labels.csv").resolve()),
                               holdout=settings.mix_pool if mixing else 0.0)
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
            f"({'true labels' if labels_used else 'no labels'}"
            + (f", {settings.mix_pool:.0%} of each class held out as the mixing attacks' clean pool" if mixing
               else "") + f") -> {work}")
        exit_code = run_pipeline(run_cfg, progress=log, show_bar=True).exit_code
    release_seconds = round(time.perf_counter() - t0, 1)
    fit_info = FitRecord.read(OutputLayout(work).fit_record)

    train_table = read_labels_table(root / "train_labels.csv")
    pool_rels = _pool_rels(work, root / "train")
    given = {r: lab for r, lab in train_table.items() if r not in pool_rels}
    released, expected, status = read_release(work, root / "train", given, classes)
    clean_arrays, y_all, all_rels = load_split(root, "train", classes)
    position = {r: i for i, r in enumerate(all_rels)}
    in_release = [i for i, r in enumerate(all_rels) if r in given]
    in_pool = [i for i, r in enumerate(all_rels) if r in pool_rels]
    rels = [all_rels[i] for i in in_release]
    test_arrays, y_test, _ = load_split(root, "test", classes)
    x_all = _as_uint8(clean_arrays, size)
    exported_rels = [r for r in rels if r in released]
    data = EvalData(x_prot=_as_uint8([released[r] for r in exported_rels], size),
                    y_prot=np.array([expected[r] for r in exported_rels], dtype=np.int64),
                    x_clean=x_all[in_release], y_clean=y_all[in_release],
                    x_test=_as_uint8(test_arrays, size), y_test=y_test,
                    originals_of_prot=x_all[[position[r] for r in exported_rels]],
                    x_pool=x_all[in_pool] if in_pool else None, y_pool=y_all[in_pool] if in_pool else None)
    per_class = {c: {"expected": int(sum(1 for r in rels if expected[r] == i)),
                     "exported": int(sum(1 for r in exported_rels if expected[r] == i))} for i, c in enumerate(classes)}
    not_exported: dict[str, int] = {}
    for r in rels:
        if r not in released:
            marker = status.get(r)
            why = (marker.status or "missing") if marker is not None else "missing"
            reason = (marker.reason or "") if marker is not None else ""
            key = f"{why}:{reason}" if reason else why
            not_exported[key] = not_exported.get(key, 0) + 1
    log(f"read back {len(exported_rels)}/{len(rels)} released training images; per class {per_class}; "
        f"test {len(data.x_test)} clean images; clean pool {len(in_pool)} images (never released)")
    modalities = sorted({str(m.modality or "OT") for m in status.values() if m.exported})
    head = {
        "schema": RESULT_SCHEMA,
        "name": name or f"{info.get('name', root.name)}_{config.protect.method}",
        "dataset": {"name": info.get("name", root.name), "root": root.name, "format": info.get("format"),
                    "modality": modalities[0] if len(modalities) == 1 else info.get("modality"),
                    "origin": info.get("origin", ""), "train": len(rels), "test": int(len(data.x_test)),
                    "clean_pool": len(in_pool), "classes": classes, "split_seed": info.get("split_seed"),
                    "majority_class_accuracy": round(float(np.bincount(y_test).max() / len(y_test)), 4)},
        "image_size": list(size),
        "method": config.protect.method,
        "params": fit_info.params,
        "config": {"fit_max_slices": config.protect.fit_max_slices, "fit_size": config.protect.fit_size,
                   "fidelity": config.fidelity.model_dump()},
        "labels_used": bool(labels_used),
        "exported": {c: v["exported"] for c, v in per_class.items()},
        "expected": {c: v["expected"] for c, v in per_class.items()},
        "not_exported": not_exported,
        "release_exit_code": exit_code,
        "release_existing": existing,
        "release_seconds": release_seconds,
        "fit": {k: getattr(fit_info, k) for k in ("slices", "fit_resolution", "fit_seconds", "labels_used",
                                                  "pixels_used", "surrogate_accuracy_per_round", "state_fingerprint")},
        "fidelity": _fidelity_summary(status),
        "device": str(device),
        "torch": torch.__version__,
        "settings": _settings_record(settings),
        "attacks": {a.name: a.words for a in attacks},
    }
    t_attack = time.perf_counter()
    rows, clean_models, not_run = run_attacks(
        attacks, data, settings, device, log, reused=reused,
        reused_from=clean_from_file or (clean_from.name if clean_from else ""),
        on_row=_partial_writer(Path(partial) if partial else None, head),
        models_dir=Path(models_dir) if models_dir else None)
    return {**head, "complete": True, "attack_seconds": round(time.perf_counter() - t_attack, 1), "rows": rows,
            "not_run": not_run, "diagnostic": _diagnostic(clean_models, data, device,
                                                          config.fidelity.max_diagnostic_accuracy_drop)}


#: A self-evaluation trains at the release's most common in-plane size, area-reduced to at most this side.
SELF_EVAL_MAX_SIDE = 128


def evaluate_own_release(config: Any, *, settings: ReleaseEvalSettings = ReleaseEvalSettings(),
                         log: Callable[[str], None] = print, partial: str | Path | None = None) -> dict[str, Any]:
    """Attack a site's own labelled release and test on its own held-out items (``labels.holdout``).

    Runs (or resumes) the release of ``config``, whose ``labels.holdout`` part of each class was never fitted on or
    exported, trains every attack of ``settings`` on the released files with the true labels (and on the clean
    originals of the same items: the baselines), and tests on the clean held-out originals. Slices are trained on
    at the release's most common in-plane size, area-reduced to :data:`SELF_EVAL_MAX_SIDE`. The mixing attacks do
    not run: every clean image outside the release is in the test part.

    Returns:
        A ``medue.release_efficacy/1`` result with ``self_evaluation: true`` and the release's config hash: the
        evidence of this release and of no other.

    Raises:
        InvalidConfigError: no labels, no ``labels.holdout``, or a release that exported nothing.
    """
    from medue.pipeline.runner import run_pipeline

    problems = []
    if config.labels.source is None:
        problems.append("a self-evaluation needs the release's labels (a `labels:` section)")
    if not config.labels.holdout:
        problems.append("a self-evaluation needs a held-out part: set labels.holdout (e.g. 0.2) or pass --holdout")
    if problems:
        raise InvalidConfigError(problems, source="evaluate")
    settings.validate()
    device = resolve_device(settings.device)
    t0 = time.perf_counter()
    log(f"release {config.name} (resumed when it exists), holding out {config.labels.holdout:.0%} of each class")
    exit_code = run_pipeline(config, resume=True, progress=log, show_bar=True).exit_code
    release_seconds = round(time.perf_counter() - t0, 1)
    out = config.output_path
    private = out / "private"
    fit_info = FitRecord.read(OutputLayout(out).fit_record)
    index = json.loads((private / "inputs.local.json").read_text())
    labels = json.loads((private / "labels.local.json").read_text())
    held = json.loads((private / "holdout.local.json").read_text())["items"]
    classes = list(labels["classes"])
    markers = [m for p in sorted((out / "markers").glob("*.json")) if (m := ItemMarker.read(p)) is not None]
    done = [m for m in markers if m.exported and m.item_id in labels["by_item"]]
    if not done:
        raise InvalidConfigError([f"{config.name}: the release exported no labelled item; nothing to attack"],
                                 source="evaluate")
    shapes = [tuple((m.shape or [])[-2:]) for m in done]
    common = max(set(shapes), key=shapes.count)
    side = min(max(common), SELF_EVAL_MAX_SIDE)
    size = (side, side)

    prot, orig, y = [], [], []
    for m in done:
        files = [str(out / "release" / o["path"]) for o in m.outputs or []]
        unit = config.protect.unit
        p = _as_uint8([_read_file_slices(_kind_of(Path(files[0])), files, unit)], size)
        o = _as_uint8([_read_file_slices(index[m.item_id]["kind"], index[m.item_id]["paths"], unit)], size)
        prot.append(p)
        orig.append(o)
        y += [labels["by_item"][m.item_id]] * len(p)
    test, y_test = [], []
    for entry in held.values():
        t = _as_uint8([_read_file_slices(entry["kind"], entry["paths"], config.protect.unit)], size)
        test.append(t)
        y_test += [classes.index(entry["label"])] * len(t)
    x_prot = np.concatenate(prot)
    data = EvalData(x_prot=x_prot, y_prot=np.asarray(y, dtype=np.int64), x_clean=np.concatenate(orig),
                    y_clean=np.asarray(y, dtype=np.int64), x_test=np.concatenate(test),
                    y_test=np.asarray(y_test, dtype=np.int64), originals_of_prot=np.concatenate(orig))
    log(f"self-evaluation: {len(x_prot)} released slice(s) of {len(done)} item(s), {len(data.x_test)} held-out "
        f"slice(s) of {len(held)} item(s), at {side}x{side} px")
    status = {m.item_id: m for m in markers}
    head = {
        "schema": RESULT_SCHEMA,
        "name": f"{config.name}_self_evaluation",
        "self_evaluation": True,
        "release_config_hash": config.config_hash(),
        "dataset": {"name": f"{config.name} (this release)", "format": "release",
                    "modality": ", ".join(sorted({str(m.modality or "OT") for m in done})),
                    "train": int(len(x_prot)), "test": int(len(data.x_test)), "items_released": len(done),
                    "items_held_out": len(held), "holdout": config.labels.holdout, "classes": classes,
                    "majority_class_accuracy": round(float(np.bincount(data.y_test).max() / len(data.y_test)), 4)},
        "image_size": list(size),
        "method": config.protect.method,
        "params": fit_info.params,
        "labels_used": True,
        "exported": {c: sum(1 for m in done if labels["by_item"][m.item_id] == i) for i, c in enumerate(classes)},
        "expected": {c: sum(1 for item, lab in labels["by_item"].items() if lab == i and item not in held)
                     for i, c in enumerate(classes)},
        "not_exported": {st: n for st in ("quarantined", "gate_failed", "failed")
                         if (n := sum(1 for m in markers if m.status == st))},
        "release_exit_code": exit_code,
        "release_seconds": release_seconds,
        "fit": {k: getattr(fit_info, k) for k in ("slices", "fit_seconds", "labels_used", "pixels_used",
                                                  "state_fingerprint")},
        "fidelity": _fidelity_summary(status),
        "device": str(device),
        "torch": torch.__version__,
        "settings": _settings_record(settings),
        "attacks": {a.name: a.words for a in settings.selected()},
    }
    t_attack = time.perf_counter()
    rows, clean_models, not_run = run_attacks(settings.selected(), data, settings, device, log,
                                              on_row=_partial_writer(Path(partial) if partial else None, head))
    return {**head, "complete": True, "attack_seconds": round(time.perf_counter() - t_attack, 1), "rows": rows,
            "not_run": not_run, "diagnostic": _diagnostic(clean_models, data, device,
                                                          config.fidelity.max_diagnostic_accuracy_drop)}


def _settings_record(settings: ReleaseEvalSettings) -> dict[str, Any]:
    rec = dataclasses.asdict(settings)
    rec["attacks"] = [a.name for a in settings.selected()]
    return rec


def _pool_rels(work: Path, input_root: Path) -> set[str]:
    """Relative paths (under ``input_root``) of the items a release held out (``private/holdout.local.json``)."""
    path = work / "private" / "holdout.local.json"
    if not path.is_file():
        return set()
    held = json.loads(path.read_text())["items"]
    return {Path(p).resolve().relative_to(input_root.resolve()).as_posix()
            for entry in held.values() for p in entry["paths"]}


def _reusable_clean_rows(earlier: EfficacyResult, info: dict[str, Any], root: Path,
                         settings: ReleaseEvalSettings) -> dict[str, dict[str, Any]]:
    """Clean-data rows of ``earlier`` keyed by attack (as rows of the result being written), after checking that
    they were trained on this dataset with the same epochs, width and adversarial budget."""
    problems = []
    if earlier.schema != RESULT_SCHEMA:
        problems.append(f"clean rows: expected a {RESULT_SCHEMA} result, found schema {earlier.schema!r}")
    ds = earlier.dataset
    if ds.get("name") != info.get("name", root.name):
        problems.append(f"clean rows: result {earlier.name!r} is of dataset {ds.get('name')!r}, not of "
                        f"{info.get('name', root.name)!r}")
    theirs = earlier.settings
    for key in ("epochs", "width", "adversarial_epsilon", "mix_pool"):
        if key in theirs and theirs.get(key) != getattr(settings, key):
            problems.append(f"clean rows: {key} was {theirs.get(key)!r} there, {getattr(settings, key)!r} here; "
                            "rerun without reusing clean rows or with the same setting")
    if problems:
        raise InvalidConfigError(problems, source="evaluate")
    # a result trains one clean baseline per attack (at its first seed), so its clean rows serve any seeds here (a
    # reused row keeps its own seed, so the record says which model it was)
    first = (theirs.get("seeds") or [None])[0]
    return {r.key: r.to_dict() for r in earlier.rows
            if r.training_data == "clean" and (first is None or r.seed == first)}


def results_markdown(result: EfficacyResult | dict[str, Any]) -> str:
    """Markdown twin of a release-efficacy result (or of the mapping being written)."""
    r = result if isinstance(result, EfficacyResult) else EfficacyResult.from_dict(result)
    x = r.extra  # what a release evaluation records besides the typed fields
    d, f = r.dataset, x.get("fidelity") or {}
    lines = [f"# Release efficacy: {r.name}", "",
             f"Dataset **{d['name']}** ({d['format']}, {r.image_size[0]}x{r.image_size[1]} px, "
             f"{d['train']} train / {d['test']} test, split seed {d.get('split_seed', 'none')}; majority class "
             f"{d['majority_class_accuracy']:.3f}). Method **{r.method}**, labels given to the release: "
             f"**{'yes' if r.labels_used else 'no'}**. Attackers always train with the true labels on the "
             f"files the release wrote, and are tested on clean held-out images. Device {x['device']}.", "",
             f"Parameters: `{json.dumps(r.params, sort_keys=True)}`", "",
             "Exported / expected per class: " + ", ".join(f"{c} {x['exported'][c]}/{x['expected'][c]}"
                                                          for c in x["expected"])
             + (f"; not exported: {x['not_exported']}" if x["not_exported"] else "") + ".", ""]
    if f:
        lines += [f"Fidelity over {f['images']} exported images: PSNR min {f['psnr_db']['min']} / mean "
                  f"{f['psnr_db']['mean']} dB, SSIM min {f['ssim']['min']} / mean {f['ssim']['mean']}, fraction "
                  f"changed max {f['fraction_changed']['max']} / mean {f['fraction_changed']['mean']}, max |delta| "
                  f"{f['max_abs_units']} units. "
                  + ("Release read back from an existing output folder (not re-run here)"
                     if x.get("release_existing") else f"Release run {x['release_seconds']} s")
                  + f" (fit {x['fit'].get('fit_seconds')} s "
                  + ("from the labels alone, no pixels read)."
                     if x['fit'].get('pixels_used') is False else f"on {x['fit'].get('slices')} slices)."),
                  ""]
    from medue.evidence import MIX_MARGIN, TARGET

    lines += [f"## Summary (clean-test accuracy; stopped: the worst seed at or below {TARGET:.2f}. Worst, best and "
              "mean are over the runs whose model fitted its training set (>= 0.98); the runs that did not fit are "
              "counted, with the best clean-test accuracy among them: above the target, they too show the "
              "protection failed)", "",
              "| attack | habit | clean data | release: worst seed | best seed | mean | attacker's training accuracy "
              "(lowest) | runs | unfit (best of them) | |", "|---|---|---|---|---|---|---|---|---|---|"]
    def fmt(v: float | None) -> str:
        return "not tested" if v is None else f"{v:.3f}"

    for s in summarise(r):
        worst = max((v for v in (s["protected_max"], s["unfit_max"]) if v is not None), default=None)
        mark = ("" if worst is None else "**not stopped**" if worst > TARGET
                else "stopped" if s["protected_max"] is not None else "no fitted run")
        if s["clean_part"] is not None and worst is not None:
            added = worst - s["clean_part"]
            mark = (f"the release adds {added:+.3f} to its clean part alone ({s['clean_part']:.3f}): "
                    + ("**more than 0.02**" if added > MIX_MARGIN else "held"))
        lines.append(f"| {s['attack']} | {s['habit']} | {fmt(s['clean'])} | {fmt(s['protected_max'])} | "
                     f"{fmt(s['protected_min'])} | {fmt(s['protected_mean'])} | {fmt(s['train_min'])} | "
                     f"{s['protected_runs']} | {s['unfit_runs']}"
                     + (f" ({s['unfit_max']:.3f})" if s["unfit_max"] is not None else "") + f" | {mark} |")
    if r.not_run:
        lines += ["", "Not run: " + "; ".join(r.not_run) + "."]
    if r.attacks:
        lines += ["", "Attacks: " + "; ".join(f"**{k}**: {v}" for k, v in r.attacks.items()) + "."]
    if x.get("attack_seconds") is not None:
        what = ("Training time of the attacks, summed over runs that ran in parallel processes"
                if x.get("attack_seconds_summed") else "Wall time of the attacks")
        lines += ["", f"{what}: {x['attack_seconds']:.0f} s on {x['device']} "
                      f"(release {x['release_seconds']} s)."]
    if x.get("complete") is False:
        lines += ["", "**Partial result: the suite was still running when this was written.**"]
    lines += ["", "## Every run", "", "| attack | data | seed | training images | train acc | clean-test acc | "
              "fit | epochs | s |", "|---|---|---|---|---|---|---|---|---|"]
    for row in r.rows:
        lines.append(f"| {row.key} | {row.training_data} | {row.seed} | {row.extra.get('train_images', '')} | "
                     f"{row.train_accuracy:.3f} | {row.clean_test_accuracy:.3f} | "
                     f"{'yes' if row.fit else '**no**'} | {row.extra['epochs']} | {row.extra['seconds']}"
                     + (f" (reused from {row.extra['reused_from']})" if row.extra.get("reused_from") else "") + " |")
    if r.diagnostic:
        lines += ["", "## Diagnostic content (clean-trained model reading released vs original training images)", "",
                  "| attacker | accuracy on originals | on released | drop | agreement | passed |",
                  "|---|---|---|---|---|---|"]
        for arch, dg in r.diagnostic.items():
            lines.append(f"| {arch} | {dg['accuracy_original']:.3f} | {dg['accuracy_protected']:.3f} | "
                         f"{dg['accuracy_drop']:+.3f} | {dg['agreement']:.3f} | {dg['passed']} |")
    return "\n".join(lines) + "\n"


__all__ = [
    "RESULT_SCHEMA",
    "EvalData",
    "IngestError",
    "ReleaseEvalSettings",
    "evaluate_own_release",
    "evaluate_release",
    "read_release",
    "resample",
    "results_markdown",
    "run_attacks",
    "summarise",
]
