"""``run_pipeline``: the only place stages are sequenced and a tracked run is opened.

plan (reads only: a refusal changes nothing) -> prepare outputs -> fit or reuse -> release gate -> protect items
(local processes or Ray) -> write documents (manifest, checks, report, checksums) -> track (MLflow). Each stage is a
function of this module; the manifest, the report and MLflow take the run's :class:`~medue.records.ReleaseOutcome`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from medue.audit.manifest import write_checksums, write_manifest
from medue.audit.report import build_report, protection_counts
from medue.audit.sinks import open_sink
from medue.device import memory_budget, resolve_device
from medue.errors import InvalidConfigError
from medue.exit_codes import EXIT_CONFIG, EXIT_ERROR, EXIT_GATE, EXIT_OK, EXIT_PARTIAL  # noqa: F401 (re-exported)
from medue.fidelity.diagnostic import release_diagnostic_check
from medue.io.atomic import remove_partials, write_text_atomic
from medue.layout import OutputLayout
from medue.pipeline.config import PipelineConfig
from medue.pipeline.display import LineProgress
from medue.pipeline.executor import execute_local, select_shard
from medue.pipeline.fit import damaged_fit_artefacts, fit_protector, release_identity
from medue.pipeline.inputs import class_names, labelled_inputs, release_facts, write_holdout
from medue.pipeline.job import FAILED, GATE_FAILED, QUARANTINED, JobContext
from medue.pipeline.release_files import release_files_check, stray_files, withdraw_stale
from medue.store import World
from medue.provenance import capture_environment, key_fingerprint
from medue.records import FitRecord, ItemMarker, ReleaseOutcome

log = logging.getLogger("medue")


@dataclass
class RunSummary:
    """What a run did; ``exit_code`` follows the CLI's convention."""

    counts: dict[str, int] = field(default_factory=dict)
    markers: list[ItemMarker] = field(default_factory=list)
    output: Path = Path(".")
    report_html: Path | None = None
    report_json: Path | None = None
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    seconds: float = 0.0
    #: Release-level checks (the diagnostic-content check); one with ``blocked`` stopped the export.
    release_checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def protection(self) -> dict[str, int]:
        """How many exported items carry the protection in full, weakened by the gate, or unchanged on purpose."""
        counts = protection_counts(self.markers)
        return {k: counts[k] for k in ("protected", "weakened_by_gate", "unchanged_on_purpose")}

    @property
    def blocked(self) -> bool:
        return any(c.get("blocked") for c in self.release_checks)

    @property
    def exit_code(self) -> int:
        if self.counts.get(GATE_FAILED) or self.blocked or any(c.get("stray_files") or c.get("below_minimum")
                                                               for c in self.release_checks):
            return EXIT_GATE
        if self.counts.get(QUARANTINED) or self.counts.get(FAILED):
            return EXIT_PARTIAL
        return EXIT_OK


#: What a resumed run must share with the fit it reuses, and how to name each in a message.
IDENTITY_NAMES = {"key_fingerprint": "key", "method": "protection method", "params": "protector parameters",
                  "labels_sha256": "set of labels", "config_hash": "configuration (method, parameters, labels, "
                  "fidelity policy, input or output)"}


def protected_fraction_check(markers: list[ItemMarker], minimum: float) -> dict[str, Any]:
    """The report's line on ``fidelity.min_protected_fraction``: the fraction of the exported items meant to carry a
    pattern (not unchanged on purpose) that carry it in full; below ``minimum`` the run fails (exit 3)."""
    counts = protection_counts(markers)
    meant = counts["protected"] + counts["weakened_by_gate"]
    fraction = counts["protected"] / meant if meant else 1.0
    below = fraction < minimum
    check: dict[str, Any] = {
        "check": f"at least {minimum:.0%} of the patterned items carry the full protection (fidelity.min_protected_"
                 "fraction)", "result": "fail" if below else "pass", "fraction": round(fraction, 4),
        "minimum": minimum, "items": meant}
    if below:
        check["below_minimum"] = True
        check["note"] = (f"{counts['protected']} of {meant} patterned item(s) ({fraction:.0%}) carry the full "
                         f"protection, below the minimum {minimum:.0%}: {counts['weakened_by_gate']} were weakened by "
                         "the fidelity gate. Loosen the gate, choose a weaker preset, or lower the minimum")
    return check


def fit_release(config: PipelineConfig, *, resume: bool = False, progress: Callable[[str], None] | None = None
                ) -> FitRecord:
    """Fit the protector of ``config``'s release and stop (no export): ``medue fit``.

    Run it in one process, or in every process of a ``torch.distributed`` group (``torchrun ... -m medue.cli fit``),
    several GPUs or machines sharing the rounds of a streamed fit (:mod:`medue.store`); ``medue run
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
    items, labels, _ = labelled_inputs(config, ignored=[], key=key)
    identity = release_identity(config, key_fingerprint(key), labels)
    info = FitRecord.read(layout.fit_record) if layout.protector_state.exists() else None
    if resume and info is not None and info.identity == identity:
        say(f"{config.output} already holds this release's fitted protector; nothing to fit")
        return info if world.rank == 0 else FitRecord(method=config.protect.method, extra={"rank": world.rank})
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
    if config.tracking.enabled:  # before the output folder or its lock exists
        from medue.audit.sinks import check_tracking_server

        problems += [p for p in [check_tracking_server(config.tracking.uri)] if p]
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


@dataclass
class ReleasePlan:
    """What a run found and decided before it writes anything (stage "plan"): the key, the inputs and labels, the
    release's identity and whether the fit on disk is reused. A run that refuses, refuses here: nothing on disk or
    in the tracking store has changed."""

    key: str
    fingerprint: str
    layout: OutputLayout
    efficacy: Any
    items: list[Any]
    labels: Any
    held: Any
    ignored: list[dict[str, str]]
    identity: dict[str, Any]
    previous: FitRecord | None
    reuse_fit: bool


def plan_release(config: PipelineConfig, *, shard: tuple[int, int] = (0, 1), resume: bool = False) -> ReleasePlan:
    """Stage "plan": read the key, the inputs, the labels and the fit on disk, and check that a resume or a shard
    matches the fitted release. Reads only.

    Raises:
        InvalidConfigError: a resume or shard of an output fitted with another key, method, parameters, labels or
            configuration.
    """
    key = config.read_key()
    efficacy = config.load_efficacy_results()  # read once, first: the gate, the report and MLflow all use it
    fingerprint = key_fingerprint(key)
    layout = OutputLayout(config.output_path)
    ignored: list[dict[str, str]] = []
    items, labels, held = labelled_inputs(config, ignored, key)
    previous = FitRecord.read(layout.fit_record)
    identity = release_identity(config, fingerprint, labels)
    reuse = bool((resume or shard != (0, 1)) and previous and layout.protector_state.exists())
    if reuse:
        assert previous is not None
        differs = [k for k, v in identity.items() if previous.identity.get(k) != v]
        if differs:
            raise InvalidConfigError([
                f"--resume{' / --shard' if shard != (0, 1) else ''}: {config.output} was fitted with a different "
                + ", ".join(IDENTITY_NAMES[k] for k in differs) + "; resuming would mix two protections in one "
                "release (nothing was changed). Resume with the original key and config, or start a new output "
                "folder"])
    return ReleasePlan(key=key, fingerprint=fingerprint, layout=layout, efficacy=efficacy, items=items,
                       labels=labels, held=held, ignored=ignored, identity=identity, previous=previous,
                       reuse_fit=reuse)


def _run_locked(config: PipelineConfig, *, shard: tuple[int, int], resume: bool,
                progress: Callable[[str], None] | None, show_bar: bool) -> RunSummary:
    """Plan (reads only: a refusal changes nothing), then open the MLflow run (so it spans the release and records
    a failure), then run the release."""
    plan = plan_release(config, shard=shard, resume=resume)
    sink = None
    if config.tracking.enabled:
        plan.layout.root.mkdir(parents=True, exist_ok=True)
        sink = open_sink(config.record(), plan.layout)
        sink.start(config.record(), plan.fingerprint)
    try:
        return _run_release(config, plan, shard=shard, resume=resume, progress=progress, show_bar=show_bar,
                            sink=sink)
    except BaseException as exc:
        if sink is not None:
            sink.fail("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise


def _run_release(config: PipelineConfig, plan: ReleasePlan, *, shard: tuple[int, int], resume: bool,
                 progress: Callable[[str], None] | None, show_bar: bool, sink: Any) -> RunSummary:
    """The stages after the plan: prepare outputs -> fit or reuse -> release gate -> protect items -> write
    documents -> track. Each is a function below."""
    say = progress or (lambda s: log.info(s))
    t_start = time.perf_counter()
    device = resolve_device(config.execution.device)
    withdrawn = prepare_outputs(config, plan, say)
    mine = select_shard(plan.items, shard)
    log.debug("input folder: %s", config.input)  # a path: only with --verbose (logs are shipped to collectors)
    say(f"found {len(plan.items)} item(s) in the input folder; shard {shard[0]}/{shard[1]} has {len(mine)}")
    fit = fit_or_reuse(config, plan, device, resume=resume, say=say)
    gate, facts = release_gate(config, plan, fit, say)
    markers = protect_items([] if gate.get("blocked") else mine, job_context(config, plan, device), config, device,
                            resume=resume, show_bar=show_bar, say=say)
    counts: dict[str, int] = {}
    for m in markers:
        counts[m.status or FAILED] = counts.get(m.status or FAILED, 0) + 1
    counts["skipped"] = sum(1 for m in markers if m.skipped)
    layout = plan.layout
    outcome = ReleaseOutcome(
        record=config.record(), key_fingerprint=plan.fingerprint, fit=fit,
        markers=[m for p in sorted(layout.markers.glob("*.json")) if (m := ItemMarker.read(p)) is not None],
        run_counts=counts, checks=[gate], efficacy=plan.efficacy, facts=facts, ignored=plan.ignored,
        class_of=class_names(plan.labels, named=config.labels.include_in_release), env=capture_environment())
    report_paths = write_documents(config, layout, outcome, withdrawn, say)
    outcome.seconds = round(time.perf_counter() - t_start, 2)
    summary = RunSummary(counts=counts, markers=sorted(markers, key=lambda m: m.item_id), output=layout.root,
                         report_json=report_paths[0], report_html=report_paths[1], seconds=outcome.seconds,
                         release_checks=outcome.checks)
    if sink is not None:  # stage "track"
        summary.mlflow_run_id, summary.tracking_uri = sink.log_release(outcome, report_paths)
    return summary


def prepare_outputs(config: PipelineConfig, plan: ReleasePlan, say: Callable[[str], None]) -> list[str]:
    """Stage "prepare outputs": the output folders, the site-private index files (inputs, labels, held-out part,
    ignored files), partial files of an interrupted run removed, withdrawn items' files removed from ``release/``.
    Returns the withdrawn item ids."""
    layout, labels = plan.layout, plan.labels
    for warning in (config.key_file_warning(), config.unit_warning()):
        if warning is not None:
            log.warning(warning)
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.make_private()
    removed = remove_partials(layout.root)
    if removed:
        say(f"removed {len(removed)} partial output(s) left by an interrupted run")
    write_text_atomic(layout.private / "ignored.local.json", json.dumps(plan.ignored, indent=2))
    if config.labels.holdout and labels is not None:
        write_holdout(layout, config, labels, plan.held, say)
    if plan.ignored:
        say(f"ignored {len(plan.ignored)} file(s) on purpose (hidden files, sidecars); listed in "
            "private/ignored.local.json")
    if labels is not None:
        write_text_atomic(layout.private / "labels.local.json", json.dumps(labels.to_dict(), indent=2))
        counts = labels.counts()
        log.debug("classes: %s", counts)  # the site's class names: only with --verbose
        say(f"labels from {config.labels.source}: {len(counts)} classes of "
            + ", ".join(str(n) for n in counts.values()) + " item(s)")
    withdrawn = withdraw_stale(layout, [it.item_id for it in plan.items])
    if withdrawn:
        say(f"withdrew {len(withdrawn)} item(s) that are no longer inputs of this release: their files left release/")
    index = {it.item_id: {"kind": it.kind, "paths": list(it.paths)} for it in plan.items}
    write_text_atomic(layout.private / "inputs.local.json", json.dumps(index, indent=2))
    return withdrawn


def fit_or_reuse(config: PipelineConfig, plan: ReleasePlan, device: torch.device, *, resume: bool,
                 say: Callable[[str], None]) -> FitRecord:
    """Stage "fit or reuse": the fit record of this release, reused on resume (fitted again when its files are
    damaged: a fit is deterministic for a key), else fitted now."""
    layout, previous, items = plan.layout, plan.previous, plan.items
    readable = [it for it in items if not it.problem]
    if not plan.reuse_fit:
        return fit_protector(readable, config, plan.key, device=device, progress=say, identity=plan.identity,
                             resume=resume)
    assert previous is not None
    damaged = damaged_fit_artefacts(layout, previous)
    if not damaged:
        say(f"reusing fitted {config.protect.method} protector (state {previous.state_fingerprint[:12]})")
        return previous
    say(f"the fitted protector's files do not match their record ({'; '.join(damaged[:3])}"
        f"{'; ...' if len(damaged) > 3 else ''}): fitting again (a fit is deterministic for a key)")
    fit = fit_protector(readable, config, plan.key, device=device, progress=say, identity=plan.identity,
                        resume=False)
    if fit.state_fingerprint != previous.state_fingerprint and any(
            m.exported for p in layout.markers.glob("*.json") if (m := ItemMarker.read(p))):
        raise InvalidConfigError([
            f"{config.output}: the fitted protector was damaged and fitting it again gave another state "
            f"({fit.state_fingerprint[:12]} instead of {previous.state_fingerprint[:12]}); "
            "the items already exported carry the first one. Restore private/ from a backup, or release into a new "
            "output folder"])
    return fit


def release_gate(config: PipelineConfig, plan: ReleasePlan, fit: FitRecord, say: Callable[[str], None]
                 ) -> tuple[dict[str, Any], Any]:
    """Stage "release gate": the diagnostic-content check of the attached evidence; a failure blocks every export
    (``blocked``) unless an override is recorded. Returns the check and the release's facts."""
    fp = config.fidelity
    facts = release_facts(plan.items, plan.labels, config) if plan.efficacy else None
    check = release_diagnostic_check(plan.efficacy, config.protect.method, fit.params,
                                     fp.max_diagnostic_accuracy_drop, facts)
    if check["result"] != "fail":
        return check, facts
    if fp.override_reason:
        check["override"] = {"reason": fp.override_reason, "by": fp.override_by}
        say(f"diagnostic check failed (accuracy drop {check['accuracy_drop']}); exporting under the recorded "
            f"override by {fp.override_by}")
    else:
        check["blocked"] = True
        say(f"release blocked: {check['check']} failed (accuracy drop {check['accuracy_drop']} > "
            f"{fp.max_diagnostic_accuracy_drop}); nothing is exported. Lower the protection strength, or record "
            "fidelity.override_reason and override_by")
    return check, facts


def job_context(config: PipelineConfig, plan: ReleasePlan, device: torch.device) -> JobContext:
    """What every item's job needs (picklable: it travels to worker processes and Ray actors)."""
    fp, deid = config.fidelity, config.deidentification_options
    return JobContext(
        out=str(plan.layout.root), input_root=str(config.input_path), key=plan.key,
        key_fingerprint=plan.fingerprint, method=config.protect.method, thresholds=fp.thresholds,
        override_reason=fp.override_reason, override_by=fp.override_by, deidentification=config.deidentification,
        deid_retain=tuple(deid.retain), keep_descriptions=deid.keep_descriptions,
        keep_private_creators=tuple(deid.keep_private_creators), uid_mode=config.uid_mode, uid_root=config.uid_root,
        reversible=config.protect.reversible, device=str(device),
        memory_bytes=memory_budget(device, memory_gb=config.execution.memory_gb, workers=config.execution.workers),
        read_ahead=(device.type == "cuda" if config.execution.read_ahead == "auto"
                    else bool(config.execution.read_ahead)),
        float_unit=config.protect.unit)


def protect_items(mine: list[Any], ctx: JobContext, config: PipelineConfig, device: torch.device, *, resume: bool,
                  show_bar: bool, say: Callable[[str], None]) -> list[ItemMarker]:
    """Stage "protect items": every item of this shard through its job (local processes or Ray), with progress;
    returns this run's markers."""
    layout = ctx.layout
    if resume:
        retry = [it for it in mine if (m := ItemMarker.read(layout.marker(it.item_id))) is not None
                 and m.status == FAILED]
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
        bar = LineProgress(len(mine), say)
    markers = []
    for marker in stream:
        markers.append(marker)
        if bar is not None:
            bar.set_postfix_str(marker.status or "")
            bar.update(1)
        if not marker.exported and not marker.skipped:
            line = f"{marker.item_id}: {marker.status} ({marker.reason or ''}) {(marker.message or '')[:200]}"
            # a log record that carries the item's fields (a JSON log line keeps them apart)
            log.warning(line, extra={"item_id": marker.item_id, "status": marker.status,
                                     "reason": marker.reason or ""})
    if bar is not None:
        bar.close()
    return markers


def write_documents(config: PipelineConfig, layout: OutputLayout, outcome: ReleaseOutcome, withdrawn: list[str],
                    say: Callable[[str], None]) -> tuple[Path | None, Path | None]:
    """Stage "write documents": the manifest, the release-files and protected-fraction checks, the report and the
    checksums over all of it. Returns the report's paths (``None`` with the report disabled)."""
    manifest = write_manifest(layout, outcome)
    strays = stray_files(layout, manifest)
    outcome.checks.append(release_files_check(withdrawn, strays))
    if strays:
        say(f"release/ holds {len(strays)} file(s) the manifest does not list: {', '.join(strays[:5])}; exit 3")
    minimum = config.fidelity.min_protected_fraction
    if minimum is not None:
        outcome.checks.append(protected_fraction_check(outcome.markers, minimum))
        if outcome.checks[-1].get("below_minimum"):
            say(f"{outcome.checks[-1]['note']}; exit 3")
    if not config.report.enabled:
        return None, None
    paths = build_report(layout, outcome)
    write_checksums(layout, manifest)  # now over the reports too
    return paths
