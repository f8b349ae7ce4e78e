"""The per-volume job: one pure, idempotent function from an input item to outputs plus a completion marker.

``process_item(item, ctx)`` reads, protects, checks and exports one item. Its only side effects are files
under ``ctx.out`` written atomically, and the marker ``markers/<item_id>.json`` is written last: an item is
done exactly when its marker exists. Any executor (a loop, a process pool, Ray) can call it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medue.device import derive_seed
from medue.errors import ExportError, IngestError
from medue.fidelity.checks import FidelityThresholds, check_fidelity
from medue.io import InputItem, output_name, read_item, write_volume
from medue.io.atomic import atomic_file, write_text_atomic
from medue.io.delta import write_delta
from medue.provenance import fingerprint_array, sha256_file
from medue.records import MARKER_SCHEMA, ItemMarker

from medue.layout import DONE, FAILED, GATE_FAILED, QUARANTINED, OutputLayout  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class JobContext:
    """Everything ``process_item`` needs; picklable, so it travels to worker processes and Ray actors."""

    out: str
    input_root: str
    key: str
    key_fingerprint: str
    method: str
    thresholds: FidelityThresholds
    override_reason: str | None = None
    override_by: str | None = None
    deidentification: str = "refuse"
    #: ``deidentification_options`` (:mod:`medue.io.basic_profile`): Basic Profile options a retained group needs,
    #: descriptions kept, private creators kept.
    deid_retain: tuple[str, ...] = ()
    keep_descriptions: bool = False
    keep_private_creators: tuple[str, ...] = ()
    uid_mode: str = "keyed"
    uid_root: str | None = None
    reversible: bool = False
    device: str = "cpu"
    #: When an item fails the fidelity gate, retry it with less noise (see :func:`adapt_support`) before giving
    #: up, so the gate does not silently drop the images hardest to protect (class skew).
    adapt_support: bool = True
    #: Working memory for one volume's tensors (:func:`medue.device.memory_budget`); ``None``: unbounded.
    memory_bytes: int | None = None
    #: Read the next volume while this one is processed (single worker; see ``execution.read_ahead``).
    read_ahead: bool = False
    #: ``protect.unit``: the step a floating-point image is read in (``None``: such images are refused).
    float_unit: float | None = None

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(Path(self.out))

    def with_device(self, device: str) -> JobContext:
        return dataclasses.replace(self, device=device)


def load_protector(path: Path, device: str) -> Any:
    """The fitted protector at ``path``, loaded once per process and device: every item of a worker shares it, and
    a protector fitted again (another modification time) is loaded again."""
    return _load_protector(str(path), path.stat().st_mtime_ns, device)


@functools.lru_cache(maxsize=1)
def _load_protector(path: str, mtime_ns: int, device: str) -> Any:
    from medue.protector_file import load_protector as _load

    return _load(Path(path), device)  # tensors and JSON types only: loading runs no pickled code


#: Extensions a quarantine copy may keep; anything else in a name (dates, MRNs) is dropped.
SAFE_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".mha", ".mhd", ".nrrd", ".nhdr", ".ima")


def _safe_suffix(name: str) -> str:
    lower = name.lower()
    return next((sfx for sfx in SAFE_SUFFIXES if lower.endswith(sfx)), "")


def scrub(text: str, item: InputItem, input_root: str) -> str:
    """``text`` with every form of the item's paths (absolute, relative, file and folder names) replaced by its id.

    Reader messages (ours, nibabel's, SimpleITK's) name files; file and folder names can carry PHI, and messages
    reach markers, reports and MLflow. Only ``private/inputs.local.json`` keeps the paths.
    """
    root = Path(input_root)
    names: set[str] = {str(root.resolve()), str(root)}
    for raw in item.paths:
        path = Path(raw)
        names.update({raw, str(path.resolve())})
        try:
            rel = path.resolve().relative_to(root.resolve())
            names.add(str(rel))
            names.update(rel.parts)
        except ValueError:
            names.add(path.name)
        names.update({path.name, path.stem, path.name.split(".")[0]})
    for name in sorted((n for n in names if n and len(n) > 3), key=len, reverse=True):
        text = text.replace(name, f"<item {item.item_id}>")
    return text


def _quarantine(item: InputItem, ctx: JobContext, reason: str, message: str) -> dict[str, Any]:
    folder = ctx.layout.quarantine / item.item_id
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for i, src in enumerate(item.paths):
        src_path = Path(src)
        if src_path.is_file():
            suffix = _safe_suffix(src_path.name)
            dst = folder / f"input_{i:04d}{suffix}"
            with atomic_file(dst) as tmp:
                shutil.copyfile(src_path, tmp)
            copies.append(dst.name)
    info = {"item_id": item.item_id, "kind": item.kind, "reason": reason, "message": message, "copies": copies}
    write_text_atomic(folder / "reason.json", json.dumps(info, indent=2))
    return info


def _finished_marker(item: InputItem, ctx: JobContext, *, resume: bool) -> ItemMarker | None:
    """The marker of an item that ``resume`` skips (its marker and outputs intact), else ``None``.

    An item that FAILED (an error of the run, such as a full disk, not of its input) is never skipped: ``--resume``
    retries it. Quarantined and gate-failed items are decided by their input and the policy, and stay as they are.
    """
    marker_path = ctx.layout.marker(item.item_id)
    if not resume or not marker_path.exists():
        return None
    previous = ItemMarker.read(marker_path)
    if previous is None or previous.status == FAILED:
        return None
    return previous if _outputs_intact(ctx.layout, previous) else None


def read_ahead_needed(item: InputItem, ctx: JobContext, *, resume: bool) -> bool:
    """Whether :func:`process_item` will read ``item`` (not an intact item skipped on resume)."""
    return _finished_marker(item, ctx, resume=resume) is None


def read_volume(item: InputItem, ctx: JobContext) -> Any:
    """The volume of ``item`` as :func:`process_item` reads it (a read-ahead thread calls this)."""
    return read_item(item, root=ctx.input_root, deidentification=ctx.deidentification, float_unit=ctx.float_unit,
                     deid_retain=ctx.deid_retain)


def process_item(item: InputItem, ctx: JobContext, *, resume: bool = True, prefetched: Future | None = None
                 ) -> ItemMarker:
    """Protect and export one item; return (and write) its completion marker.

    With ``resume`` an item whose marker exists is skipped and its marker returned (``"skipped": True``).
    ``prefetched`` is a future of :func:`read_volume` for this item, started while the previous item was processed
    (its failure is this item's quarantine, exactly as a read here); ``stage_seconds["read"]`` is then the wait.
    """
    layout = ctx.layout
    marker_path = layout.marker(item.item_id)
    previous = _finished_marker(item, ctx, resume=resume)
    if previous is not None:
        return dataclasses.replace(previous, skipped=True)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"item_id": item.item_id, "schema": MARKER_SCHEMA, "kind": item.kind, "skipped": False}
    stages: dict[str, float] = {}
    result["stage_seconds"] = stages
    try:
        volume = prefetched.result() if prefetched is not None else read_volume(item, ctx)
    except Exception as exc:  # any reader failure is this item's problem, never the batch's
        reason = exc.reason if isinstance(exc, IngestError) else "unreadable"
        text = str(exc) if isinstance(exc, IngestError) else (
            f"could not be read ({type(exc).__name__}: {exc}); expected a readable DICOM series, NIfTI or MHA/NRRD "
            "file; check the file with `medue inspect` and fix or remove it")
        message = scrub(text, item, ctx.input_root)
        result.update(status=QUARANTINED, reason=reason, message=message)
        result["quarantine"] = _quarantine(item, ctx, reason, message)
        return _finish(result, marker_path, t0)
    stages["read"] = round(time.perf_counter() - t0, 4)
    if prefetched is not None:
        result["read_ahead"] = True

    result.update(format=volume.source.format, modality=volume.modality, shape=list(volume.array.shape),
                  dtype=str(volume.array.dtype), input_sha256=list(volume.source.sha256),
                  warnings=[w for s in volume.history for w in s.warnings])
    try:
        protector = load_protector(layout.protector_state, ctx.device)
        fitted = _fitted_delta(layout, item.item_id, volume.array.shape)
        t = time.perf_counter()
        protected = protector.protect(volume, label=item.label, seed=derive_seed(ctx.key, "volume", item.item_id),
                                      device=ctx.device, key_fingerprint=ctx.key_fingerprint, delta=fitted,
                                      memory_bytes=ctx.memory_bytes)
        stages["protect"] = round(time.perf_counter() - t, 4)
        t = time.perf_counter()
        step = protected.history[-1]
        result["protection"] = step.to_dict()
        slope, _ = volume.rescale
        fid = check_fidelity(volume.array, protected.array, ctx.thresholds, rescale_slope=slope,
                             valid_range=volume.valid_range, device=ctx.device, budget_bytes=ctx.memory_bytes)
        if not fid.passed and ctx.adapt_support and protector.budget != float("inf"):
            # (a method published without a norm bound, conv as CUDA, is not thinned into another method: the
            # gate's verdict stands, and only a recorded override exports it)
            limits = list(fid.failed_limits)  # what the full protection missed
            protected, fid, kept = adapt_support(volume, protected, fid, ctx, slope)
            result["protection"] = protected.history[-1].to_dict()
            result["protection"]["stats"].update(kept)
            result["adapted"] = {**kept, "limits": limits, "reason": "fidelity gate: less noise for this item "
                                 "(smaller support or amplitude) before giving up"}
        result["fidelity"] = fid.to_dict()
        stages["check"] = round(time.perf_counter() - t, 4)
        on_purpose = protector.unchanged_label(item.label)
        if on_purpose:
            result["unchanged_on_purpose"] = ("class-wise noise with blank_class: this item's class carries no "
                                              "pattern, so the release's other classes do")
        if fid.fraction_changed == 0 and protector.epsilon > 0 and not ctx.override_reason and not on_purpose:
            # nothing could be changed (constant, empty or background-free image): exporting it as a protected,
            # DERIVED image would claim a protection it does not carry
            result.update(status=GATE_FAILED, message="no voxel was changed, so this image carries no protection "
                          "(constant or empty image, or no background for the placement); check the input or "
                          "record fidelity.override_reason to release it unprotected")
            return _finish(result, marker_path, t0)
        _save_preview(layout.private / "previews" / f"{item.item_id}.npz", volume.array, protected.array,
                      window=display_window(volume))
        if not fid.passed and not ctx.override_reason:
            result.update(status=GATE_FAILED, message="; ".join(fid.failures))
            return _finish(result, marker_path, t0)
        if not fid.passed:
            result["override"] = {"reason": ctx.override_reason, "by": ctx.override_by, "failures": fid.failures}
        name = output_name(volume, item.item_id)
        what = ("no perturbation: this item's class is left unchanged on purpose (blank class)"
                if result.get("unchanged_on_purpose") else "unlearnable-example perturbation")
        derivation = (f"medue {step.medue_version} {ctx.method}: {what}, "
                      f"max |delta| {fid.max_abs_units} stored units ({fid.max_abs_physical:g} "
                      f"{volume.header.get('rescale_type', 'units')}), {100 * fid.fraction_changed:.2f}% of voxels "
                      f"changed; key fingerprint {ctx.key_fingerprint}")
        t = time.perf_counter()
        files = write_volume(protected, layout.release / name, derivation=derivation,
                             uid_key=ctx.key if ctx.uid_mode == "keyed" else None, uid_root=ctx.uid_root,
                             keep_descriptions=ctx.keep_descriptions, keep_private_creators=ctx.keep_private_creators,
                             unchanged=bool(result.get("unchanged_on_purpose")))
        stages["write_verify"] = round(time.perf_counter() - t, 4)
        result["outputs"] = [{"path": str(f.relative_to(layout.release)), "sha256": sha256_file(f),
                              "bytes": f.stat().st_size} for f in files]
        if ctx.reversible:
            t = time.perf_counter()
            delta_path = write_delta(volume.array, protected.array, layout.private / "deltas" / f"{item.item_id}.npz",
                                     float_unit=volume.header.get("float_unit"), key=ctx.key)
            result["delta"] = {"path": str(delta_path.relative_to(layout.root)), "sha256": sha256_file(delta_path)}
            stages["delta"] = round(time.perf_counter() - t, 4)
        result["status"] = DONE
    except Exception as exc:  # the item fails, the batch goes on
        reason = "export_failed" if isinstance(exc, ExportError) else type(exc).__name__
        result.update(status=FAILED, reason=reason, message=scrub(str(exc), item, ctx.input_root),
                      traceback=scrub(traceback.format_exc(limit=3), item, ctx.input_root))
    return _finish(result, marker_path, t0)


def adapt_support(volume: Any, protected: Any, fid: Any, ctx: JobContext, slope: float,
                  attempts: int = 8, min_kept: float = 0.25, min_scale: float = 0.25) -> tuple[Any, Any, dict]:
    """Make a failing item pass the gate with less noise rather than drop it (which would skew the classes).

    A PSNR or fraction-changed failure keeps a keyed random subset of the changed voxels, sized from the
    shortfall; an SSIM failure (noise in flat regions) scales the amplitude down. A fraction-changed failure
    thins straight to the configured fraction (a dense method, class-wise EM for one, keeps the most voxels the
    config allows, however few that is of its own support); PSNR-driven thinning stops at ``min_kept`` of the
    support and amplitude scaling at ``min_scale``: an image that only passes with (almost) no noise is a gate
    failure, not a protected image. Returns ``(protected volume, fidelity report, what was kept)``.
    """
    import dataclasses as _dc

    from medue.device import derive_seed as _seed

    original = volume.array
    delta = protected.array.astype(np.int64) - original.astype(np.int64)
    rng = np.random.default_rng(_seed(ctx.key, "adapt", volume.fingerprint))
    order = rng.random(delta.shape)
    kept, scale = 1.0, 1.0
    t = ctx.thresholds
    step = protected.history[-1]
    for _ in range(attempts):
        over = t.max_fraction_changed is not None and fid.fraction_changed > t.max_fraction_changed
        low_psnr = t.min_psnr_db is not None and np.isfinite(fid.psnr_db) and fid.psnr_db < t.min_psnr_db
        changed = False
        if over:  # the config's own limit: thin to it, whatever share of the support that leaves
            kept *= t.max_fraction_changed / max(fid.fraction_changed, 1e-12) * 0.98
            changed = True
        elif low_psnr and kept > min_kept:  # (after a fraction thinning the PSNR is measured again first)
            kept = max(kept * 10 ** (-(t.min_psnr_db - fid.psnr_db + 0.3) / 10), min_kept)
            changed = True
        if not changed and scale > min_scale:  # SSIM, or PSNR with the support at its floor
            scale = max(scale * 0.7, min_scale)
            changed = True
        if not changed:
            break
        thinned = np.where(order < kept, delta, 0)
        thinned = np.sign(thinned) * np.floor(np.abs(thinned) * scale + 0.5).astype(np.int64)
        array = (original.astype(np.int64) + thinned).astype(original.dtype)
        stats = {**step.stats, "fraction_changed": float(np.count_nonzero(thinned) / max(thinned.size, 1)),
                 "linf_units": int(np.abs(thinned).max()) if thinned.size else 0}
        protected = volume.with_array(array, _dc.replace(step, stats=stats, output_fingerprint=fingerprint_array(array)))
        fid = check_fidelity(original, array, t, rescale_slope=slope, valid_range=volume.valid_range,
                             device=ctx.device, budget_bytes=ctx.memory_bytes)
        if fid.passed:
            break
    return protected, fid, {"kept_fraction": round(kept, 4), "amplitude_scale": round(scale, 4)}


def _outputs_intact(layout: OutputLayout, marker: ItemMarker) -> bool:
    """Whether every file a done marker lists is still there with its recorded size and SHA-256."""
    for out in (marker.outputs or []) if marker.exported else []:
        path = layout.release / out["path"]
        if not path.is_file() or path.stat().st_size != out.get("bytes") or sha256_file(path) != out.get("sha256"):
            return False
    return True


def _fitted_delta(layout: OutputLayout, item_id: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The delta the dataset-level fit found for this item's slices, when it kept one of the right shape."""
    path = layout.private / "noise" / f"{item_id}.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        delta = data["delta"]
    return delta if delta.shape == tuple(shape) else None


#: The window a CT preview is shown in when its header names none: soft tissue, centre 40 HU, width 400 HU.
CT_WINDOW_HU = (40.0, 400.0)


def display_window(volume: Any) -> tuple[float, float] | None:
    """The clinical display window of ``volume`` in stored units, ``(low, high)``: the header's own (DICOM
    WindowCenter/WindowWidth), else for CT a soft-tissue window; ``None`` for other images (shown by percentiles)."""
    window = volume.header.get("window")
    if window is None and volume.modality == "CT":
        window = CT_WINDOW_HU
    if window is None:
        return None
    slope, intercept = volume.rescale
    centre, width = float(window[0]), float(window[1])
    low, high = sorted(((centre - width / 2 - intercept) / slope, (centre + width / 2 - intercept) / slope))
    return low, high


def _save_preview(path: Path, original: np.ndarray, protected: np.ndarray,
                  window: tuple[float, float] | None = None) -> None:
    z = original.shape[0] // 2
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if window is None else {"window": np.asarray(window, dtype=np.float64)}
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, original=original[z], protected=protected[z], **extra)


def _finish(result: dict[str, Any], marker_path: Path, t0: float) -> ItemMarker:
    result["seconds"] = round(time.perf_counter() - t0, 3)
    text = json.dumps(result, indent=2, default=str)
    write_text_atomic(marker_path, text)
    return ItemMarker.from_dict(json.loads(text))  # the marker as it reads back from disk
