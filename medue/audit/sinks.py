"""Tracking sinks. ``MlflowSink`` records one parent run per release job (embedded SQLite store by default)."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from medue.audit.report import protection_counts
from medue.errors import MissingDependencyError
from medue.evidence import describe, evidence_applies, summarise
from medue.layout import OutputLayout
from medue.records import ItemMarker, ReleaseOutcome, ReleaseRecord


def default_tracking_uri(layout: OutputLayout) -> str:
    """``sqlite:///<output>/mlflow/mlflow.db``: an embedded store, no server needed."""
    db = (layout.root / "mlflow" / "mlflow.db").resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"



class MlflowSink:
    """Logs a release to MLflow: params (resolved config), metrics, input dataset, artifacts, tags. No PHI, no key."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path, record: Path | None = None) -> None:
        try:
            import mlflow
        except ImportError as exc:
            raise MissingDependencyError("MLflow tracking requires `pip install mlflow`") from exc
        self.mlflow = mlflow
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.artifact_root = artifact_root
        #: ``private/mlflow_run.local.json``: the run a release opened, so that the next run of the same output
        #: folder can close it as KILLED when its process died, and link to it.
        self.record = record
        self.run_id: str | None = None

    def _experiment_id(self) -> str:
        client = self.mlflow.tracking.MlflowClient(tracking_uri=self.tracking_uri)
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.tracking_uri.startswith("sqlite:"):
            self.artifact_root.mkdir(parents=True, exist_ok=True)
            location = self.artifact_root.resolve().as_uri()
        try:
            return client.create_experiment(self.experiment, artifact_location=location)
        except Exception:  # another release created it between the lookup and here (the name is unique)
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def start(self, config: ReleaseRecord, key_fingerprint: str) -> str:
        """Open the release's MLflow run now (status RUNNING), so its start time and duration are the release's
        and a release that dies shows as FAILED rather than not at all. Returns the run id."""
        from medue._version import __version__

        self.mlflow.set_tracking_uri(self.tracking_uri)
        client = self.mlflow.tracking.MlflowClient(tracking_uri=self.tracking_uri)
        tags = {"medue.version": __version__, "medue.release": config.name, "medue.method": config.method,
                "medue.key_fingerprint": key_fingerprint, **_source_tags(),
                "mlflow.note.content": f"medue release {config.name}: {config.method} protection (running)"}
        earlier = self._close_earlier(client)
        if earlier:
            tags["medue.resumed_from_run"] = earlier
        run = client.create_run(self._experiment_id(), run_name=f"release-{config.name}", tags=tags)
        self.run_id = run.info.run_id
        if self.record is not None:
            from medue.io.atomic import write_text_atomic

            self.record.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.record, json.dumps({"run_id": self.run_id, "experiment": self.experiment}))
        return self.run_id

    def _close_earlier(self, client: Any) -> str | None:
        """The run an earlier release of this output folder opened in this store (``None`` when none): closed as
        KILLED when it is still RUNNING (its process died: this one holds the folder's lock now)."""
        if self.record is None or not self.record.is_file():
            return None
        try:
            run_id = json.loads(self.record.read_text())["run_id"]
            run = client.get_run(run_id)
        except Exception:  # another store, a deleted run, a damaged record: nothing to close or link
            return None
        if run.info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")
        return run_id

    def fail(self, status: str = "FAILED") -> None:
        """Close the run opened by :meth:`start` with ``status`` (FAILED, KILLED) when the release did not finish."""
        if self.run_id:
            self.mlflow.tracking.MlflowClient(tracking_uri=self.tracking_uri).set_terminated(self.run_id, status=status)
            self.run_id = None

    def log_release(self, outcome: ReleaseOutcome, report_paths: tuple[Path | None, Path | None]
                    ) -> tuple[str, str]:
        """Log ``outcome`` (parameters, metrics, tags, the report and manifest as artifacts) into the run opened by
        :meth:`start`; returns the run id and the tracking URI."""
        config, markers, summary_counts, fit_info = (outcome.record, outcome.markers, outcome.run_counts,
                                                     outcome.fit)
        key_fingerprint, env, seconds = outcome.key_fingerprint, outcome.env, outcome.seconds
        efficacy, release_checks, facts = outcome.efficacy, outcome.checks, outcome.facts
        mlflow = self.mlflow
        mlflow.set_tracking_uri(self.tracking_uri)
        exp_id = self._experiment_id()
        params: dict[str, Any] = dict(config.public_params)  # no path, no tracking store, no key variable
        params["protector.state_fingerprint"] = fit_info.state_fingerprint
        params["items"] = len(markers)
        metrics: dict[str, float] = {f"count_{k}": float(v) for k, v in summary_counts.items()}
        fids = [m.fidelity for m in markers if m.fidelity is not None]
        if fids:
            psnrs = [f["psnr_db"] for f in fids if f.get("psnr_db") is not None]
            if psnrs:
                metrics.update(psnr_db_min=float(np.min(psnrs)), psnr_db_mean=float(np.mean(psnrs)))
            metrics.update(ssim_min=float(min(f["ssim"] for f in fids)),
                           max_abs_units=float(max(f["max_abs_units"] for f in fids)),
                           max_abs_physical=float(max(f["max_abs_physical"] for f in fids)),
                           fraction_changed_mean=float(np.mean([f["fraction_changed"] for f in fids])),
                           gate_pass_rate=float(np.mean([bool(f["passed"]) for f in fids])))
        efficacy_tags: dict[str, str] = {}
        if efficacy:
            applies, why = evidence_applies(efficacy, config.method, fit_info.params, facts)
            efficacy_tags = {"medue.efficacy.evidence": describe(efficacy)[:500],
                             "medue.efficacy.applies": "yes" if applies else f"no: {why}"[:500]}
            if applies:  # numbers measured for another method, parameters or data are not this release's
                for row in summarise(efficacy):
                    name = f"efficacy.{row['attack']}"
                    for k in ("clean", "protected_max"):
                        if row[k] is not None:
                            metrics[f"{name}.{k}"] = float(row[k])
        for check in release_checks:
            if "accuracy_drop" in check:
                metrics["diagnostic_accuracy_drop"] = float(check["accuracy_drop"])
        carried = protection_counts(markers)
        for k in ("protected", "weakened_by_gate", "unchanged_on_purpose"):
            metrics[f"protection_{k}"] = float(carried[k])
        metrics["fit_seconds"] = float(fit_info.fit_seconds or 0.0)
        metrics["run_seconds"] = float(seconds)
        tags = {"medue.version": env.get("medue", ""), "medue.config_hash": config.config_hash,
                "medue.key_fingerprint": key_fingerprint, "medue.method": config.method,
                "medue.release": config.name, "torch.version": str(env.get("torch", ""))}
        tags.update(efficacy_tags)
        tags.update(_source_tags())
        done, total = summary_counts.get("done", 0), len(markers)
        tags["mlflow.note.content"] = (
            f"medue release {config.name}: {config.method} protection; {done} of {total} item(s) exported "
            f"({carried['protected']} protected in full, {carried['weakened_by_gate']} weakened by the fidelity gate, "
            f"{carried['unchanged_on_purpose']} unchanged on purpose), "
            + ", ".join(f"{k} {v}" for k, v in sorted(summary_counts.items()) if k not in ("done", "skipped") and v)
            + _efficacy_words(efficacy_tags)
            + "".join(f"; diagnostic content check: {c['result']}" for c in release_checks
                      if c.get("check", "").startswith("diagnostic"))).rstrip(", ")
        tags.update({"medue.check.diagnostic": c["result"] for c in release_checks
                     if c.get("check", "").startswith("diagnostic")})
        with (mlflow.start_run(run_id=self.run_id) if self.run_id else
              mlflow.start_run(experiment_id=exp_id, run_name=f"release-{config.name}")) as run:
            mlflow.set_tags(tags)
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            mlflow.log_metrics(metrics)
            import pandas as pd

            rows = [{"item_id": m.item_id, "status": m.status,
                     "input_sha256": ",".join(m.input_sha256 or [])} for m in markers]
            frame = pd.DataFrame(rows or [{"item_id": "", "status": "", "input_sha256": ""}])
            dataset = mlflow.data.from_pandas(frame, name=f"{config.name}-inputs")
            mlflow.log_input(dataset, context="release-input")
            with tempfile.TemporaryDirectory() as tmp:
                t = Path(tmp)
                (t / "config.resolved.json").write_text(json.dumps(
                    {k: v for k, v in params.items()}, indent=2, default=str))
                (t / "items.jsonl").write_text("\n".join(json.dumps(_public_marker(m), default=str) for m in markers))
                (t / "environment.json").write_text(json.dumps(env, indent=2, default=str))
                (t / "fit.json").write_text(json.dumps(fit_info, indent=2, default=str))
                for f in t.iterdir():
                    mlflow.log_artifact(str(f))
            mlflow.log_artifact(str(OutputLayout(config.output_path).release / "manifest.json"))
            for p in report_paths:
                if p is not None and p.exists():
                    mlflow.log_artifact(str(p), artifact_path="report")
                    if p.suffix == ".html":  # the report's figures, as images the MLflow UI shows
                        with tempfile.TemporaryDirectory() as tmp:
                            for name, png in report_figures(p.read_text(encoding="utf-8")):
                                (Path(tmp) / name).write_bytes(png)
                            if any(Path(tmp).iterdir()):
                                mlflow.log_artifacts(tmp, artifact_path="figures")
            run_id = run.info.run_id
        self.run_id = None  # closed FINISHED by the context manager
        return run_id, self.tracking_uri


def _source_tags() -> dict[str, str]:
    """MLflow's own tags for who ran what: the operating-system user and the medue command."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in a container without a passwd entry
        user = "unknown"
    return {"mlflow.user": user, "mlflow.source.name": "medue run", "mlflow.source.type": "LOCAL"}


def report_figures(html_text: str) -> list[tuple[str, bytes]]:
    """The PNG figures embedded in a report's HTML, as ``(file name from the alt text, bytes)``."""
    import base64
    import re

    out = []
    for alt, data in re.findall(r"<img alt='([^']*)' src='data:image/png;base64,([^']+)'>", html_text):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", alt).strip("_") or "figure"
        out.append((f"{len(out):02d}_{name}.png", base64.b64decode(data)))
    return out


def _public_marker(m: ItemMarker) -> dict[str, Any]:
    """A marker without anything path-like from the input side (warnings and messages are PHI-free by design)."""
    return dataclasses.replace(m, traceback=None, quarantine=None).to_dict()


def _create_store_atomically(db: Path) -> None:
    """Create and migrate an embedded MLflow store beside ``db``, then link it into place.

    MLflow creates its tables in several steps; a kill -9 (or a full disk) in between used to leave a store that
    every later run failed to open (``table ... already exists``). A half-made store now only exists under a
    partial name, which the next run removes with the other partial outputs.
    """
    import uuid

    from medue.io.atomic import PARTIAL_TAG

    tmp = db.with_name(f"{db.stem}{PARTIAL_TAG}{uuid.uuid4().hex[:8]}{db.suffix}")
    import mlflow

    db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
    try:  # a hard link appears whole or not at all, and never replaces a store another release made meanwhile
        os.link(tmp, db)
    except FileExistsError:
        pass  # another release created the store first: use that one
    finally:
        tmp.unlink(missing_ok=True)


def _efficacy_words(tags: dict[str, str]) -> str:
    """The run description's words on the efficacy evidence: whether it applies to this release, and which it is."""
    if not tags:
        return "; efficacy not measured for this release"
    applies = tags["medue.efficacy.applies"]
    head = ("; efficacy evidence applies to this release: " if applies == "yes" else
            f"; efficacy evidence does not apply to this release ({applies.removeprefix('no: ')}): ")
    return head + tags["medue.efficacy.evidence"][:200]


#: How long a tracking server may take to answer, and how often MLflow retries, unless the site's environment says
#: otherwise (MLflow's own defaults hold a job for minutes when the server is down).
TRACKING_TIMEOUT_S, TRACKING_RETRIES = 10, 2


def check_tracking_server(uri: str | None, timeout: float = 5.0) -> str | None:
    """For an ``http(s)://`` tracking URI, whether its host accepts a connection within ``timeout`` seconds: ``None``
    when it does (or the URI is not a server), else the problem in one line with the fix."""
    from urllib.parse import urlparse
    import socket

    if not uri or not uri.startswith(("http://", "https://")):
        return None
    parsed = urlparse(uri)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return None
    except OSError as exc:
        return (f"tracking.uri: the MLflow server at {parsed.hostname}:{port} does not answer "
                f"({type(exc).__name__}, {timeout:g} s); start it, fix tracking.uri, or run with --no-tracking "
                "(tracking.enabled: false); nothing was written")


def open_sink(config: ReleaseRecord, layout: OutputLayout) -> MlflowSink:
    uri = config.tracking_uri or default_tracking_uri(layout)
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(TRACKING_TIMEOUT_S))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(TRACKING_RETRIES))
    if uri.startswith("sqlite:///"):  # the embedded store, or a site's own SQLite file: made whole, once
        db = Path(uri[len("sqlite:///"):])
        if not db.exists():
            _create_store_atomically(db)
    return MlflowSink(uri, config.tracking_experiment, layout.root / "mlflow" / "artifacts",
                      record=layout.private / "mlflow_run.local.json")
