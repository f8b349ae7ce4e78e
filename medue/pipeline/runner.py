"""``run_pipeline``: the only place stages are sequenced and a tracked run is opened.

discover -> shard -> fit the protector once (or reuse it on resume) -> per-volume jobs (local or Ray) ->
manifest -> report -> MLflow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from medue.audit.manifest import write_checksums, write_manifest
from medue.audit.report import build_report
from medue.audit.sinks import open_sink
from medue.device import derive_seed, make_generator, memory_budget, resolve_device
from medue.errors import IngestError, InvalidConfigError
from medue.fidelity.diagnostic import release_diagnostic_check
from medue.evidence import ReleaseFacts
from medue.io import InputItem, discover_inputs, peek, read_item
from medue.io.atomic import atomic_file, remove_partials, write_text_atomic
from medue.layout import OutputLayout
from medue.pipeline.config import PipelineConfig
from medue.pipeline.executor import execute_local, select_shard
from medue.pipeline.job import DONE, FAILED, GATE_FAILED, QUARANTINED, JobContext, read_marker
from medue.protect import UnitSpace, build_protector
from medue.protect.stream import FitCheckpoint, RowFile, SliceStore, SliceWriter, World
from medue.provenance import capture_environment, key_fingerprint, sha256_file

log = logging.getLogger("medue")

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_GATE, EXIT_PARTIAL = 0, 1, 2, 3, 4


@dataclass
class RunSummary:
    """What a run did; ``exit_code`` follows the CLI's convention."""

    counts: dict[str, int] = field(default_factory=dict)
    markers: list[dict[str, Any]] = field(default_factory=list)
    output: Path = Path(".")
    report_html: Path | None = None
    report_json: Path | None = None
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    seconds: float = 0.0
    #: Release-level checks (the diagnostic-content check); one with ``blocked`` stopped the export.
    release_checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return any(c.get("blocked") for c in self.release_checks)

    @property
    def exit_code(self) -> int:
        if self.counts.get(GATE_FAILED) or self.blocked:
            return EXIT_GATE
        if self.counts.get(QUARANTINED) or self.counts.get(FAILED):
            return EXIT_PARTIAL
        return EXIT_OK


#: Largest fit set held in memory (float32 bytes); beyond it slices are sampled evenly and the rest get ``perturb``.
MAX_FIT_BYTES = 1024**3


@dataclass
class FitSet:
    """The slices a protector is fitted on: ``x`` ``(N, 1, H, W)`` stored units, per-slice labels and spaces.

    ``owners`` lists ``(item_id, first_row, n_rows, native)`` for each item, ``native`` telling whether its rows are
    at the item's own resolution (so the fitted deltas can be exported as they are).
    """

    x: torch.Tensor | SliceStore
    labels: torch.Tensor | None
    space: UnitSpace
    owners: list[tuple[str, int, int, bool]]


def _fit_samples(items: list[InputItem], config: PipelineConfig, store: Path | None = None) -> FitSet:
    """Every slice of every readable item (dataset-level fit), at the exported resolution unless ``fit_size``.

    With ``store`` (a protector whose fit streams, :attr:`~medue.protect.base.Protector.streams_fit`) the slices are
    appended to that file and read a batch at a time (:class:`~medue.protect.stream.SliceStore`), so
    :data:`MAX_FIT_BYTES` does not apply: every slice of the release is fitted, only ``fit_max_slices`` caps them.

    One pass over the items, holding only the slices kept (never whole volumes side by side). The fit resolution is
    ``fit_size``, else the in-plane shape of the first readable item; slices of other shapes are area-resized to it
    (and then get the fitted protector's ``perturb`` at export). ``fit_max_slices`` and :data:`MAX_FIT_BYTES` cap
    the slices kept: each item then contributes evenly spaced slices, and with more items than slices allowed,
    evenly spaced items contribute one each (an unreadable one is replaced by the next readable item, so a batch
    never fails to fit because the items picked first were bad).
    """
    wanted = len(items)
    if len(items) > (config.protect.fit_max_slices or len(items)):
        wanted = config.protect.fit_max_slices
        keep = np.unique(np.linspace(0, len(items) - 1, wanted).round().astype(int))
        picked = set(keep.tolist())
        items = [items[i] for i in keep] + [it for i, it in enumerate(items) if i not in picked]
    size: tuple[int, int] | None = (config.protect.fit_size, config.protect.fit_size) if config.protect.fit_size \
        else None
    quota: int | None = None
    xs: list[torch.Tensor] = []
    labels, spaces, counts, owners, row = [], [], [], [], 0
    writer = SliceWriter(store) if store is not None else None
    for item in items:
        if len(owners) >= wanted:
            break
        try:
            vol = read_item(item, root=config.input_path, deidentification=config.deidentification)
        except Exception:  # any unreadable item: the job quarantines it with its reason
            continue
        if size is None:
            size = tuple(int(v) for v in vol.array.shape[1:])  # type: ignore[assignment]
        if quota is None:
            cap = 2**62 if store is not None else max(1, MAX_FIT_BYTES // (4 * size[0] * size[1]))
            budget = min(config.protect.fit_max_slices or 2**62, cap)
            quota = max(1, budget // wanted)
        space = UnitSpace.for_volume(vol)
        z = vol.array.shape[0]
        picks = np.arange(z) if quota >= z else np.unique(np.linspace(0, z - 1, quota).round().astype(int))
        t = torch.from_numpy(vol.array[picks].astype(np.float32)).unsqueeze(1)
        native = tuple(t.shape[-2:]) == tuple(size) and len(picks) == z
        if tuple(t.shape[-2:]) != tuple(size):
            t = torch.round(F.interpolate(t, size=size, mode="area"))
        if writer is not None:
            writer.append(t)
        else:
            xs.append(t)
        labels += [item.label] * len(picks)
        spaces.append(space)
        counts.append(len(picks))
        owners.append((item.item_id, row, len(picks), native))
        row += len(picks)
        del vol
    if not owners:
        if writer is not None:
            writer.discard()
        raise IngestError("no readable input to fit the protector on", reason="empty")
    space = UnitSpace.per_sample(spaces, counts)
    y = None if any(v is None for v in labels) else torch.tensor(labels, dtype=torch.long)
    return FitSet(writer.close() if writer is not None else torch.cat(xs), y, space, owners)


def _store_meta(fit: FitSet) -> dict[str, Any]:
    """What the other processes of a distributed fit need besides the slice file (written by process 0)."""
    sp = fit.space
    return {"shape": list(fit.x.shape), "owners": [list(o) for o in fit.owners],
            "labels": None if fit.labels is None else fit.labels.tolist(),
            "offset": sp.offset.flatten().tolist(), "scale": sp.scale.flatten().tolist(), "lo": sp.lo, "hi": sp.hi}


def _fit_from_meta(meta: dict[str, Any], store: Path) -> FitSet:
    column = (lambda v: torch.tensor(v, dtype=torch.float32).view(-1, 1, 1, 1))
    space = UnitSpace(column(meta["offset"]), column(meta["scale"]), meta["lo"], meta["hi"])
    labels = None if meta["labels"] is None else torch.tensor(meta["labels"], dtype=torch.long)
    return FitSet(SliceStore.open(store, tuple(meta["shape"])), labels, space,
                  [(str(o[0]), int(o[1]), int(o[2]), bool(o[3])) for o in meta["owners"]])


def _label_only_fit(items: list[InputItem]) -> FitSet:
    """One stand-in sample per item (zeros, ``(N, 1, 1, 1)``) with its label, for a protector whose fit uses the
    labels alone (:meth:`~medue.protect.base.Protector.fit_uses_pixels`): no volume is read before export."""
    if not items:
        raise IngestError("no readable input to fit the protector on", reason="empty")
    n = len(items)
    space = UnitSpace(torch.zeros(n, 1, 1, 1), torch.ones(n, 1, 1, 1), 0.0, 1.0)
    labels = None if any(it.label is None for it in items) else \
        torch.tensor([int(it.label) for it in items], dtype=torch.long)  # type: ignore[arg-type]
    return FitSet(torch.zeros(n, 1, 1, 1), labels, space, [(it.item_id, i, 1, False) for i, it in enumerate(items)])


#: What a resumed run must share with the fit it reuses, and how to name each in a message.
IDENTITY_NAMES = {"key_fingerprint": "key", "method": "protection method", "params": "protector parameters",
                  "labels_sha256": "set of labels", "config_hash": "configuration (method, parameters, labels, "
                  "fidelity policy, input or output)"}


def release_identity(config: PipelineConfig, key_fingerprint: str, labels: Any) -> dict[str, Any]:
    """What fixes a release's content: key, method, parameters, labels and the rest of the config (not execution)."""
    labels_json = json.dumps(labels.to_dict() if labels is not None else None, sort_keys=True)
    return {"key_fingerprint": key_fingerprint, "method": config.protect.method,
            "params": json.dumps(dict(config.protect.params), sort_keys=True, default=str),
            "labels_sha256": hashlib.sha256(labels_json.encode()).hexdigest(), "config_hash": config.config_hash()}


def fit_protector(items: list[InputItem], config: PipelineConfig, key: str, *, device: torch.device,
                  progress: Callable[[str], None] | None = None,
                  identity: dict[str, Any] | None = None, resume: bool = False) -> dict[str, Any]:
    """Fit the configured protector on the whole release and save it (and sample-wise deltas) under ``private/``.

    Sample-wise methods keep the delta the bi-level optimisation found for each slice
    (``private/noise/<item_id>.npz``), so every exported slice carries noise optimised jointly with the surrogate;
    class-wise methods keep one pattern per class and apply it by label.

    A method whose fit streams (:attr:`~medue.protect.base.Protector.streams_fit`: the sample-wise EM family) gets
    every slice of the release in ``private/fit/slices.f32`` (read a batch at a time), keeps its deltas
    in two buffer files there and checkpoints every round (:mod:`medue.protect.stream`); with ``resume`` a fit
    interrupted after round ``r`` continues at round ``r + 1``. Under a ``torch.distributed`` group (``medue fit``
    launched by ``torchrun``) process 0 writes the slices and the results, and all processes share the rounds. The
    folder is removed once the fit is saved.
    """
    layout = OutputLayout(config.output_path)
    world = World.current()
    # an interrupted fit must never look like a finished one to --resume: its record goes first, comes back last
    if world.rank == 0:
        (layout.private / "protector.json").unlink(missing_ok=True)
    protector = build_protector(config.protect.method, **dict(config.protect.params))
    labelled = bool(items) and all(it.label is not None for it in items)
    pixels = protector.fit_uses_pixels(labelled)
    fit_dir = layout.private / "fit"
    streamed = pixels and protector.streams_fit
    if streamed:
        store = fit_dir / "slices.f32"
        if world.rank == 0:
            fit = _fit_samples(items, config, store=store)
            write_text_atomic(fit_dir / "slices.json", json.dumps(_store_meta(fit)))
            world.barrier()
        else:
            world.barrier()  # process 0 is writing the slices
            fit = _fit_from_meta(json.loads((fit_dir / "slices.json").read_text()), store)
        rows = hashlib.sha256(json.dumps([list(o) for o in fit.owners]).encode()).hexdigest()
        protector.checkpoint = FitCheckpoint(  # type: ignore[attr-defined]
            fit_dir, {**(identity or {}), "rows": rows, "processes": world.size}, resume=resume)
    elif world.size > 1:
        raise InvalidConfigError([f"protect.method {config.protect.method!r} with these parameters does not fit in "
                                  "several processes (only the sample-wise EM family streams its fit); run "
                                  "`medue fit` in one process, or `medue run` directly"])
    else:
        fit = _fit_samples(items, config) if pixels else _label_only_fit(items)
    if protector.needs_labels and fit.labels is None:
        raise InvalidConfigError([f"protect.method {config.protect.method!r} is class-wise and needs a label per "
                                  "item: add a `labels:` section to the config"])
    if hasattr(protector, "progress"):
        protector.progress = progress
    t0 = time.perf_counter()
    if progress:
        progress(f"fitting {config.protect.method} on {fit.x.shape[0]} slice(s) of {len(fit.owners)} item(s) at "
                 f"{fit.x.shape[-2]}x{fit.x.shape[-1]} px, {'true labels' if fit.labels is not None else 'no labels'}"
                 if pixels else f"fitting {config.protect.method} on the labels of {len(fit.owners)} item(s) "
                 "(its fit needs the labels alone: no volume is read)")
    samplewise = getattr(protector, "mode", "") == "samplewise"
    slices, resolution = (int(fit.x.shape[0]), list(fit.x.shape[-2:])) if pixels else (0, None)
    try:
        delta = protector.fit(fit.x.to(device), None if fit.labels is None else fit.labels.to(device),
                              fit.space.to(device), generator=make_generator(derive_seed(key, "fit", config.name)),
                              return_delta=samplewise)  # class-wise noise is applied at export: no full-size delta
    except ValueError as exc:  # a parameter that only the data can refute (e.g. blank_class beyond the classes)
        raise InvalidConfigError([f"protect.params: {exc}"]) from exc
    fit.x = None  # type: ignore[assignment]  # the slices are not needed any more: free them before export
    if hasattr(protector, "progress"):
        protector.progress = None
    model = getattr(protector, "model", None)
    if model is not None:
        model.to("cpu")
    resumed_from = getattr(getattr(protector, "checkpoint", None), "resumed_from", None)
    if world.rank != 0:  # process 0 writes the results
        return {"method": config.protect.method, "rank": world.rank}
    layout.private.mkdir(parents=True, exist_ok=True)
    stored = 0
    noise_sha256: dict[str, str] = {}
    noise_dir = layout.private / "noise"
    for stale in noise_dir.glob("*.npz"):  # deltas of an earlier fit must never reach this release
        stale.unlink()
    if getattr(protector, "mode", "") == "samplewise":
        noise_dir.mkdir(parents=True, exist_ok=True)
        d = delta if isinstance(delta, (np.ndarray, RowFile)) \
            else torch.round(delta).to(torch.int16).cpu().numpy()  # a streamed fit: its int16 buffer on disk
        for item_id, first, n, native in fit.owners:
            if native:
                rows = d.read(slice(first, first + n)) if isinstance(d, RowFile) else d[first:first + n]
                with atomic_file(noise_dir / f"{item_id}.npz") as tmp, open(tmp, "wb") as fh:
                    np.savez_compressed(fh, delta=np.asarray(rows, dtype=np.int16)[:, 0])
                noise_sha256[item_id] = sha256_file(noise_dir / f"{item_id}.npz")
                stored += 1
    tmp = layout.protector_state.with_suffix(".tmp")
    protector.save(tmp)
    tmp.replace(layout.protector_state)
    info = {"method": config.protect.method, "config_hash": config.config_hash(), "identity": identity or {},
            "slices": slices,
            "items": len(fit.owners), "fit_resolution": resolution,
            "labels_used": fit.labels is not None, "pixels_used": pixels, "items_with_fitted_delta": stored,
            "noise_sha256": noise_sha256,
            "fit_seconds": round(time.perf_counter() - t0, 2), "state_fingerprint": protector.state_fingerprint(),
            "state_sha256": sha256_file(layout.protector_state), "params": protector.params(),
            "surrogate_accuracy_per_round": list(getattr(protector, "history", []) or [])}
    if streamed:  # resumed_after_round: index (from 0, as in checkpoint.json) of the last round before a resume
        info.update({"streamed_from_disk": True, "processes": world.size, "resumed_after_round": resumed_from})
    write_text_atomic(layout.private / "protector.json", json.dumps(info, indent=2))
    if streamed:
        shutil.rmtree(fit_dir, ignore_errors=True)  # slices and buffers: the noise is in private/noise/ now
    return info


class _LineProgress:
    """Progress as whole lines, one every ``step`` of the items or after ``seconds`` without one (for logs, where a
    redrawn bar becomes thousands of carriage returns); the tqdm methods the release loop calls."""

    def __init__(self, total: int, say: Callable[[str], None], *, seconds: float = 30.0, step: float = 0.1) -> None:
        self.total, self.say, self.seconds = total, say, seconds
        self.every = max(1, int(total * step))
        self.done = 0
        self.counts: dict[str, int] = {}
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.done == self.total or self.done % self.every == 0 or now - self.last >= self.seconds:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)  # > 0: at least one item is done here
            left = (self.total - self.done) / rate
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
            self.say(f"protect: {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%), "
                     f"{rate:.1f} volume/s, about {left:.0f} s left [{counts}]")

    def set_postfix_str(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1

    def close(self) -> None:
        pass


def fit_release(config: PipelineConfig, *, resume: bool = False, progress: Callable[[str], None] | None = None
                ) -> dict[str, Any]:
    """Fit the protector of ``config``'s release and stop (no export): ``medue fit``.

    Run it in one process, or in every process of a ``torch.distributed`` group (``torchrun ... -m medue.cli fit``),
    several GPUs or machines sharing the rounds of a streamed fit (:mod:`medue.protect.stream`); ``medue run
    --resume`` then exports with the fitted protector. With ``resume`` an interrupted fit continues from its last
    checkpointed round, and a finished fit of the same release is kept as it is. Returns the fit record
    (``private/protector.json``; on processes other than 0, only the method and the rank).

    Raises:
        InvalidConfigError: bad folders, key or labels, or a method whose fit does not run in several processes.
    """
    problems = config.folder_problems()
    if problems:
        raise InvalidConfigError(problems)
    say = progress or (lambda s: log.info(s))
    world = World.current()
    key = config.read_key()
    layout = OutputLayout(config.output_path)
    items, labels, _ = _labelled_inputs(config, ignored=[], key=key)
    identity = release_identity(config, key_fingerprint(key), labels)
    previous = layout.private / "protector.json"
    info = json.loads(previous.read_text()) if previous.exists() and layout.protector_state.exists() else None
    if resume and info is not None and info.get("identity") == identity:
        say(f"{config.output} already holds this release's fitted protector; nothing to fit")
        return info if world.rank == 0 else {"method": config.protect.method, "rank": world.rank}
    if layout.markers.is_dir() and any(layout.markers.glob("*.json")):
        raise InvalidConfigError([
            f"{config.output} already holds exported items (markers/) of an earlier fit; a new fit would mix two "
            "protections in one release. Finish that release with `medue run --resume` and its own config, or fit "
            "into a new output folder"])
    with _output_lock(config) if world.rank == 0 else contextlib.nullcontext():  # process 0 holds it for all
        device = resolve_device(config.execution.device)
        if device.type == "cuda" and world.size > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", world.rank)) % torch.cuda.device_count())
        say(f"fit of {len(items)} item(s) on {device}" + (f", process {world.rank} of {world.size}"
                                                            if world.size > 1 else ""))
        return fit_protector([it for it in items if not it.problem], config, key, device=device,
                             progress=say if world.rank == 0 else None, identity=identity, resume=resume)


def run_pipeline(config: PipelineConfig, *, shard: tuple[int, int] = (0, 1), resume: bool = False,
                 progress: Callable[[str], None] | None = None, show_bar: bool = False) -> RunSummary:
    """Run a whole release job. Returns a :class:`RunSummary`; nothing is raised for per-item problems.

    Raises:
        InvalidConfigError: bad input/output folders, labels, a resume that does not match the fitted release,
            or another run holding the output folder's lock.
    """
    problems = config.folder_problems()
    if problems:
        raise InvalidConfigError(problems)
    with _output_lock(config):
        return _run_locked(config, shard=shard, resume=resume, progress=progress, show_bar=show_bar)


@contextlib.contextmanager
def _output_lock(config: PipelineConfig) -> Iterator[None]:
    """Hold the output folder's lock (one run or fit writes to a folder at a time), or say who holds it."""
    from medue.io.atomic import exclusive_lock

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(config.output_path))
        except BlockingIOError as exc:
            raise InvalidConfigError([f"another medue run is writing to {config.output} (see its .medue.lock); "
                                      "wait for it to finish or choose another output folder"]) from exc
        yield


def _labelled_inputs(config: PipelineConfig, ignored: list[dict[str, str]], key: str | None = None
                     ) -> tuple[list[InputItem], Any, list[InputItem]]:
    """The release's inputs (files skipped on purpose go to ``ignored``), each with its label, the labels, and the
    held-out items.

    With ``labels.holdout`` the held-out items (:func:`holdout_ids`, drawn with ``key``) are left out of the first
    list: they are never fitted on or exported.
    """
    items = discover_inputs(config.input_path, ignored=ignored)
    labels = config.read_labels(items)
    held: list[InputItem] = []
    if labels is not None:
        items = [dataclasses.replace(it, label=labels.by_item.get(it.item_id)) for it in items]
    if config.labels.holdout and labels is not None:
        ids = holdout_ids(labels, config.labels.holdout, key or config.read_key())
        held = [it for it in items if it.item_id in ids]
        items = [it for it in items if it.item_id not in ids]
    return items, labels, held


def damaged_fit_artefacts(layout: OutputLayout, record: dict[str, Any]) -> list[str]:
    """What of a finished fit does not match its record (``private/protector.json``): the protector state and each
    item's fitted noise, by SHA-256. Empty when everything is intact."""
    problems = []
    if record.get("state_sha256") and sha256_file(layout.protector_state) != record["state_sha256"]:
        problems.append("private/protector.pt differs from its recorded SHA-256")
    for item_id, digest in sorted((record.get("noise_sha256") or {}).items()):
        path = layout.private / "noise" / f"{item_id}.npz"
        if not path.is_file():
            problems.append(f"private/noise/{item_id}.npz is missing")
        elif sha256_file(path) != digest:
            problems.append(f"private/noise/{item_id}.npz differs from its recorded SHA-256")
    return problems


def release_facts(items: list[InputItem], labels: Any, config: PipelineConfig) -> ReleaseFacts:
    """Modality, in-plane sizes and classes of a release's readable items, from their headers (no pixels read), to
    decide whether an efficacy result is this release's evidence."""
    peeked = [p for it in items if not it.problem and (p := peek(it)) is not None]
    return ReleaseFacts.from_items([{"modality": m, "shape": s} for m, s in peeked],
                                   classes=labels.classes if labels is not None else (),
                                   config_hash=config.config_hash())


def holdout_ids(labels: Any, fraction: float, key: str) -> set[str]:
    """The items kept clean and unreleased: ``round(fraction * n)`` of each class's ``n`` labelled items (at least
    one where a class has two or more), ranked by a key-derived hash of the item id, so the same release always
    holds out the same items and nobody without the key can tell which."""
    held: set[str] = set()
    for c in range(len(labels.classes)):
        ids = sorted((i for i, lab in labels.by_item.items() if lab == c), key=lambda i: derive_seed(key, "holdout", i))
        n = int(round(fraction * len(ids)))
        if fraction > 0 and len(ids) >= 2:
            n = min(max(n, 1), len(ids) - 1)
        held.update(ids[:n])
    return held


def _write_holdout(layout: OutputLayout, config: PipelineConfig, labels: Any, held: list[InputItem],
                   say: Callable[[str], None]) -> None:
    """``private/holdout.local.json``: the held-out items (id, class, paths) that ``medue evaluate --self`` tests on."""
    record = {"fraction": config.labels.holdout, "classes": list(labels.classes),
              "items": {it.item_id: {"label": labels.classes[it.label], "kind": it.kind, "paths": list(it.paths)}
                        for it in sorted(held, key=lambda it: it.item_id)}}
    write_text_atomic(layout.private / "holdout.local.json", json.dumps(record, indent=2))
    say(f"held out {len(held)} labelled item(s) ({config.labels.holdout:.0%} of each class): never fitted or "
        "exported; listed in private/holdout.local.json for `medue evaluate --self`")


def _run_locked(config: PipelineConfig, *, shard: tuple[int, int], resume: bool,
                progress: Callable[[str], None] | None, show_bar: bool) -> RunSummary:
    """Open the MLflow run first (so it spans the release and records a failure), then run the release."""

    sink = None
    if config.tracking.enabled:
        key = config.read_key()
        OutputLayout(config.output_path).root.mkdir(parents=True, exist_ok=True)
        sink = open_sink(config.record(), OutputLayout(config.output_path))
        sink.start(config.record(), key_fingerprint(key))
    try:
        return _run_release(config, shard=shard, resume=resume, progress=progress, show_bar=show_bar, sink=sink)
    except BaseException as exc:
        if sink is not None:
            sink.fail("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise


def _run_release(config: PipelineConfig, *, shard: tuple[int, int], resume: bool,
                 progress: Callable[[str], None] | None, show_bar: bool, sink: Any) -> RunSummary:

    say = progress or (lambda s: log.info(s))
    t_start = time.perf_counter()
    key = config.read_key()
    if (warning := config.key_file_warning()) is not None:
        log.warning(warning)
    efficacy = config.load_efficacy_results()  # read once, first: the gate, the report and MLflow all use it
    fingerprint = key_fingerprint(key)
    device = resolve_device(config.execution.device)
    layout = OutputLayout(config.output_path)
    layout.root.mkdir(parents=True, exist_ok=True)
    removed = remove_partials(layout.root)
    if removed:
        say(f"removed {len(removed)} partial output(s) left by an interrupted run")
    ignored: list[dict[str, str]] = []
    items, labels, held = _labelled_inputs(config, ignored, key)
    write_text_atomic(layout.private / "ignored.local.json", json.dumps(ignored, indent=2))
    if config.labels.holdout and labels is not None:
        _write_holdout(layout, config, labels, held, say)
    if ignored:
        say(f"ignored {len(ignored)} file(s) on purpose (hidden files, sidecars); listed in private/ignored.local.json")
    if labels is not None:
        write_text_atomic(layout.private / "labels.local.json", json.dumps(labels.to_dict(), indent=2))
        say(f"labels from {config.labels.source}: " + ", ".join(f"{c} {n}" for c, n in labels.counts().items()))
    mine = select_shard(items, shard)
    say(f"found {len(items)} item(s) under {config.input}; shard {shard[0]}/{shard[1]} has {len(mine)}")
    index = {it.item_id: {"kind": it.kind, "paths": list(it.paths)} for it in items}
    write_text_atomic(layout.private / "inputs.local.json", json.dumps(index, indent=2))

    state_info_path = layout.private / "protector.json"
    previous = json.loads(state_info_path.read_text()) if state_info_path.exists() else None
    identity = release_identity(config, fingerprint, labels)
    if (resume or shard != (0, 1)) and previous and layout.protector_state.exists():
        differs = [k for k, v in identity.items() if previous.get("identity", {}).get(k) != v]
        if differs:
            raise InvalidConfigError([
                f"--resume{' / --shard' if shard != (0, 1) else ''}: {config.output} was fitted with a different "
                + ", ".join(IDENTITY_NAMES[k] for k in differs) + "; resuming would mix two protections in one "
                "release. Resume with the original key and config, or start a new output folder"])
        damaged = damaged_fit_artefacts(layout, previous)
        if damaged:
            say(f"the fitted protector's files do not match their record ({'; '.join(damaged[:3])}"
                f"{'; ...' if len(damaged) > 3 else ''}): fitting again (a fit is deterministic for a key)")
            fit_info = fit_protector([it for it in items if not it.problem], config, key, device=device,
                                     progress=say, identity=identity, resume=False)
            if fit_info.get("state_fingerprint") != previous.get("state_fingerprint") and any(
                    m.get("status") == DONE for p in layout.markers.glob("*.json") if (m := read_marker(p))):
                raise InvalidConfigError([
                    f"{config.output}: the fitted protector was damaged and fitting it again gave another state "
                    f"({fit_info.get('state_fingerprint', '')[:12]} instead of "
                    f"{previous.get('state_fingerprint', '')[:12]}); the items already exported carry the first "
                    "one. Restore private/ from a backup, or release into a new output folder"])
        else:
            fit_info = previous
            say(f"reusing fitted {config.protect.method} protector (state {fit_info['state_fingerprint'][:12]})")
    else:
        fit_info = fit_protector([it for it in items if not it.problem], config, key, device=device, progress=say,
                                 identity=identity, resume=resume)

    fp = config.fidelity
    facts = release_facts(items, labels, config) if efficacy else None
    release_checks = [release_diagnostic_check(efficacy, config.protect.method, fit_info.get("params", {}),
                                               fp.max_diagnostic_accuracy_drop, facts)]
    if release_checks[0]["result"] == "fail":
        if fp.override_reason:
            release_checks[0]["override"] = {"reason": fp.override_reason, "by": fp.override_by}
            say(f"diagnostic check failed (accuracy drop {release_checks[0]['accuracy_drop']}); exporting under "
                f"the recorded override by {fp.override_by}")
        else:
            release_checks[0]["blocked"] = True
            say(f"release blocked: {release_checks[0]['check']} failed (accuracy drop "
                f"{release_checks[0]['accuracy_drop']} > {fp.max_diagnostic_accuracy_drop}); nothing is exported. "
                "Lower the protection strength, or record fidelity.override_reason and override_by")
            mine = []
    ctx = JobContext(
        out=str(layout.root), input_root=str(config.input_path), key=key, key_fingerprint=fingerprint,
        method=config.protect.method,
        thresholds=fp.thresholds,
        override_reason=fp.override_reason, override_by=fp.override_by, deidentification=config.deidentification,
        uid_mode=config.uid_mode, uid_root=config.uid_root, reversible=config.protect.reversible, device=str(device),
        memory_bytes=memory_budget(device, memory_gb=config.execution.memory_gb, workers=config.execution.workers),
        read_ahead=(device.type == "cuda" if config.execution.read_ahead == "auto"
                    else bool(config.execution.read_ahead)),
    )
    if resume:
        retry = [it for it in mine if (m := read_marker(layout.marker(it.item_id))) is not None
                 and m.get("status") == FAILED]
        if retry:
            say(f"retrying {len(retry)} item(s) that failed in an earlier run (errors of the run, not of the input)")
    workers = config.execution.workers
    if config.execution.backend == "ray":
        from medue.pipeline.ray_backend import execute_ray

        stream = execute_ray(mine, ctx, workers=workers, resume=resume,
                             gpus_per_worker=1.0 if device.type == "cuda" else 0.0)
    else:
        stream = execute_local(mine, ctx, workers=workers, resume=resume)
    bar: Any = None
    if show_bar and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(mine), unit="volume", desc="protect", dynamic_ncols=True)
    elif show_bar:  # a log file or a scheduler's capture: whole lines, not a redrawn bar
        bar = _LineProgress(len(mine), say)
    markers = []
    for marker in stream:
        markers.append(marker)
        if bar is not None:
            bar.set_postfix_str(marker.get("status", ""))
            bar.update(1)
        if marker.get("status") != DONE and not marker.get("skipped"):
            say(f"{marker['item_id']}: {marker.get('status')} ({marker.get('reason', '')}) {marker.get('message', '')[:200]}")
    if bar is not None:
        bar.close()
    summary = RunSummary(output=layout.root, release_checks=release_checks)
    for m in markers:
        summary.counts[m.get("status", FAILED)] = summary.counts.get(m.get("status", FAILED), 0) + 1
    summary.counts["skipped"] = sum(1 for m in markers if m.get("skipped"))
    summary.markers = sorted(markers, key=lambda m: m["item_id"])

    all_markers = [m for p in sorted(layout.markers.glob("*.json")) if (m := read_marker(p)) is not None]
    record = config.record()
    manifest = write_manifest(layout, record, all_markers, fit_info, fingerprint)
    env = capture_environment()
    if config.report.enabled:
        summary.report_json, summary.report_html = build_report(layout, record, all_markers, fit_info, fingerprint,
                                                                env, manifest, efficacy=efficacy,
                                                                release_checks=release_checks, ignored=ignored,
                                                                facts=facts)
        write_checksums(layout, manifest)  # now over the reports too
    summary.seconds = round(time.perf_counter() - t_start, 2)
    if sink is not None:
        summary.mlflow_run_id, summary.tracking_uri = sink.log_release(
            config=record, markers=all_markers, summary_counts=summary.counts, fit_info=fit_info,
            key_fingerprint=fingerprint, env=env, manifest=manifest, report_paths=(summary.report_json,
                                                                                  summary.report_html),
            seconds=summary.seconds, efficacy=efficacy, release_checks=release_checks, facts=facts)
    return summary
