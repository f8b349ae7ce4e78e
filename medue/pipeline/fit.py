"""The release's fit: which slices it sees, its identity, and fitting (and saving) the protector once.

``medue run`` (:func:`medue.pipeline.runner.run_pipeline`) and ``medue fit`` (:func:`medue.pipeline.runner.fit_release`)
both fit through :func:`fit_protector`, with one seed rule (:func:`fit_seed`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from medue.device import derive_seed, make_generator
from medue.errors import IngestError, InvalidConfigError
from medue.io import InputItem, read_item
from medue.io.atomic import atomic_file, write_text_atomic
from medue.layout import OutputLayout
from medue.pipeline.config import PipelineConfig
from medue.protect import Protector, UnitSpace, build_protector
from medue.protector_file import save_protector
from medue.provenance import sha256_file
from medue.records import FitRecord
from medue.store import FitCheckpoint, RowFile, SliceStore, SliceWriter, World

log = logging.getLogger("medue")

#: Largest fit set held in memory (float32 bytes); beyond it slices are sampled evenly and the rest get ``perturb``.
MAX_FIT_BYTES = 1024**3


def fit_seed(key: str, release_name: str) -> int:
    """The fit's seed: from the site's key and the release's name (``medue run``, ``medue fit`` and
    :func:`medue.api.fit` alike)."""
    return derive_seed(key, "fit", release_name)


def fit_slices(protector: Protector, x: Any, labels: torch.Tensor | None, space: UnitSpace, *, key: str,
               release_name: str, device: torch.device) -> Any:
    """The fit itself, as ``medue run``, ``medue fit`` and :func:`medue.api.fit` run it: ``protector`` fitted on the
    slices ``x`` (a tensor or the release's :class:`~medue.store.SliceStore`) with the random numbers of
    :func:`fit_seed`, its surrogate (if any) moved back to the CPU. Returns the per-slice delta of a sample-wise
    method (class-wise patterns are applied at export: no full-size delta).

    Raises:
        InvalidConfigError: a parameter that only the data can refute (e.g. ``blank_class`` beyond the classes).
    """
    samplewise = getattr(protector, "mode", "") == "samplewise"
    try:
        delta = protector.fit(x.to(device), None if labels is None else labels.to(device), space.to(device),
                              generator=make_generator(fit_seed(key, release_name)), return_delta=samplewise)
    except ValueError as exc:
        raise InvalidConfigError([f"protect.params: {exc}"]) from exc
    model = getattr(protector, "model", None)
    if model is not None:
        model.to("cpu")
    return delta


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
    appended to that file and read a batch at a time (:class:`~medue.store.SliceStore`), so
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
            vol = read_item(item, root=config.input_path, deidentification=config.deidentification,
                            float_unit=config.protect.unit,
                            deid_retain=tuple(config.deidentification_options.retain))  # as the export reads it
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


def release_identity(config: PipelineConfig, key_fingerprint: str, labels: Any) -> dict[str, Any]:
    """What fixes a release's content: key, method, parameters, labels and the rest of the config (not execution)."""
    labels_json = json.dumps(labels.to_dict() if labels is not None else None, sort_keys=True)
    return {"key_fingerprint": key_fingerprint, "method": config.protect.method,
            "params": json.dumps(dict(config.protect.params), sort_keys=True, default=str),
            "labels_sha256": hashlib.sha256(labels_json.encode()).hexdigest(), "config_hash": config.config_hash()}


def fit_protector(items: list[InputItem], config: PipelineConfig, key: str, *, device: torch.device,
                  progress: Callable[[str], None] | None = None,
                  identity: dict[str, Any] | None = None, resume: bool = False) -> FitRecord:
    """Fit the configured protector on the whole release and save it (and sample-wise deltas) under ``private/``;
    returns the fit record written to ``private/protector.json`` (on processes other than 0, a record with the
    method and ``extra["rank"]`` only).

    Sample-wise methods keep the delta the bi-level optimisation found for each slice
    (``private/noise/<item_id>.npz``), so every exported slice carries noise optimised jointly with the surrogate;
    class-wise methods keep one pattern per class and apply it by label.

    A method whose fit streams (:attr:`~medue.protect.base.Protector.streams_fit`: the sample-wise EM family) gets
    every slice of the release in ``private/fit/slices.f32`` (read a batch at a time), keeps its deltas
    in two buffer files there and checkpoints every round (:mod:`medue.store`); with ``resume`` a fit
    interrupted after round ``r`` continues at round ``r + 1``. Under a ``torch.distributed`` group (``medue fit``
    launched by ``torchrun``) process 0 writes the slices and the results, and all processes share the rounds. The
    folder is removed once the fit is saved.
    """
    layout = OutputLayout(config.output_path)
    world = World.current()
    # an interrupted fit must never look like a finished one to --resume: its record goes first, comes back last
    if world.rank == 0:
        layout.fit_record.unlink(missing_ok=True)
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
            fit_dir, {**(identity or {}), "rows": rows, "processes": world.size}, resume=resume, world=world)
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
    slices, resolution = (int(fit.x.shape[0]), list(fit.x.shape[-2:])) if pixels else (0, None)
    delta = fit_slices(protector, fit.x, fit.labels, fit.space, key=key, release_name=config.name, device=device)
    fit.x = None  # type: ignore[assignment]  # the slices are not needed any more: free them before export
    if hasattr(protector, "progress"):
        protector.progress = None
    resumed_from = getattr(getattr(protector, "checkpoint", None), "resumed_from", None)
    if world.rank != 0:  # process 0 writes the results
        return FitRecord(method=config.protect.method, extra={"rank": world.rank})
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
    save_protector(protector, tmp)
    tmp.replace(layout.protector_state)
    info = FitRecord(
        method=config.protect.method, config_hash=config.config_hash(), identity=identity or {}, slices=slices,
        items=len(fit.owners), fit_resolution=resolution, labels_used=fit.labels is not None, pixels_used=pixels,
        items_with_fitted_delta=stored, noise_sha256=noise_sha256, fit_seconds=round(time.perf_counter() - t0, 2),
        state_fingerprint=protector.state_fingerprint(), state_sha256=sha256_file(layout.protector_state),
        params=protector.params(), surrogate_accuracy_per_round=list(getattr(protector, "history", []) or []),
        # resumed_after_round: index (from 0, as in checkpoint.json) of the last round before a resume
        **({"streamed_from_disk": True, "processes": world.size, "resumed_after_round": resumed_from}
           if streamed else {}))
    info.write(layout.fit_record)
    if streamed:
        shutil.rmtree(fit_dir, ignore_errors=True)  # slices and buffers: the noise is in private/noise/ now
    return info


def damaged_fit_artefacts(layout: OutputLayout, record: FitRecord) -> list[str]:
    """What of a finished fit does not match its record (``private/protector.json``): the protector state and each
    item's fitted noise, by SHA-256. Empty when everything is intact."""
    problems = []
    if record.state_sha256 and sha256_file(layout.protector_state) != record.state_sha256:
        problems.append("private/protector.pt differs from its recorded SHA-256")
    for item_id, digest in sorted((record.noise_sha256 or {}).items()):
        path = layout.private / "noise" / f"{item_id}.npz"
        if not path.is_file():
            problems.append(f"private/noise/{item_id}.npz is missing")
        elif sha256_file(path) != digest:
            problems.append(f"private/noise/{item_id}.npz differs from its recorded SHA-256")
    return problems

