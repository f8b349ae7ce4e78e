"""Typed records that cross layers: what the audit layer is told about a release's configuration.

The pipeline builds a :class:`ReleaseRecord` from its validated config (``PipelineConfig.record()``) and hands it
to the manifest, the report and the tracking sink, so that ``audit/`` never imports ``pipeline/``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from medue.layout import DONE


@dataclasses.dataclass(frozen=True)
class ReleaseRecord:
    """A release's configuration as the audit layer reads it.

    Attributes:
        name: Release name.
        config_hash: Hash of what determines the release's content.
        method: Protection method key.
        public_params: The resolved config flattened to dotted names, private fields (paths, the tracking store,
            the key's variable) left out: what may be logged and published.
        fidelity_policy: The fidelity thresholds as configured.
        deidentification: ``refuse``, ``warn`` or ``ignore``.
        uid_mode: How new UIDs are made.
        labels_in_release: Whether the labels are published with the release.
        reversible: Whether private deltas are kept for authorised restoration.
        override_reason: The recorded fidelity override, if any.
        override_by: Who recorded it.
        max_items_pictured: Previews in the HTML report.
        report_enabled: Whether the reports are written.
        tracking_uri: MLflow tracking URI (``None``: the embedded store in the output folder).
        tracking_experiment: MLflow experiment name.
        output_path: The output folder (site-local; never logged or published).
    """

    name: str
    config_hash: str
    method: str
    public_params: dict[str, Any]
    fidelity_policy: dict[str, Any]
    deidentification: str
    uid_mode: str
    labels_in_release: bool
    reversible: bool
    override_reason: str | None
    override_by: str | None
    max_items_pictured: int
    report_enabled: bool
    tracking_uri: str | None
    tracking_experiment: str
    output_path: Path
    #: The PS3.15 Basic Profile and options a derived DICOM copy follows (:func:`medue.io.basic_profile.policy_words`).
    deidentification_profile: str = ""


@dataclasses.dataclass(frozen=True)
class FitRecord:
    """The fit of a release, as ``private/protector.json`` holds it (written by :func:`medue.pipeline.fit.
    fit_protector`, read through :meth:`read` everywhere else).

    Attributes:
        method: The protection method.
        params: Its resolved parameters (inert ones included).
        state_fingerprint: Fingerprint of the fitted state (the protection it places).
        state_sha256: SHA-256 of ``private/protector.pt``.
        identity: What a resume must share with this fit (key fingerprint, method, parameters, labels, config).
        config_hash: The config hash of the fit.
        slices, items: What the fit saw.
        fit_resolution: The in-plane size it fitted at, if resized.
        labels_used, pixels_used: Whether it read the labels and the pixels (a placed pattern needs neither pixel).
        items_with_fitted_delta: Items whose sample-wise noise was stored, with each file's SHA-256 in
            ``noise_sha256``.
        fit_seconds: Wall time of the fit.
        surrogate_accuracy_per_round: The surrogate's accuracy per min-min round (optimised methods).
        streamed_from_disk, processes, resumed_after_round: A streamed (multi-process) fit's facts.
        extra: Keys of a newer writer, kept.
    """

    method: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    state_fingerprint: str = ""
    state_sha256: str = ""
    identity: dict[str, Any] = dataclasses.field(default_factory=dict)
    config_hash: str = ""
    slices: int | None = None
    items: int | None = None
    fit_resolution: Any = None
    labels_used: bool = False
    pixels_used: bool = True
    items_with_fitted_delta: int = 0
    noise_sha256: dict[str, str] = dataclasses.field(default_factory=dict)
    fit_seconds: float = 0.0
    surrogate_accuracy_per_round: list[float] = dataclasses.field(default_factory=list)
    streamed_from_disk: bool | None = None
    processes: int | None = None
    resumed_after_round: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    #: The order of the keys in the file (the order the fit has always written them).
    ORDER = ("method", "config_hash", "identity", "slices", "items", "fit_resolution", "labels_used", "pixels_used",
             "items_with_fitted_delta", "noise_sha256", "fit_seconds", "state_fingerprint", "state_sha256", "params",
             "surrogate_accuracy_per_round", "streamed_from_disk", "processes", "resumed_after_round")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitRecord:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in names},
                   extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.ORDER:
            value = getattr(self, name)
            if name in ("streamed_from_disk", "processes", "resumed_after_round") and not self.streamed_from_disk:
                continue  # written only by a streamed fit
            out[name] = value
        return {**out, **self.extra}

    @classmethod
    def read(cls, path: Path) -> FitRecord | None:
        """The record at ``path``, or ``None`` when there is none (or it is not one: a damaged file is refit)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        return cls.from_dict(data) if isinstance(data, dict) and isinstance(data.get("method"), str) else None

    def write(self, path: Path) -> None:
        from medue.io.atomic import write_text_atomic

        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2))


@dataclasses.dataclass
class ReleaseOutcome:
    """What a run produced, handed whole to the manifest, the report and the tracking store (stage "write
    documents" and "track" of :func:`medue.pipeline.runner.run_pipeline`).

    Attributes:
        record: The release's settings as published (:class:`ReleaseRecord`).
        key_fingerprint: The key's fingerprint (never the key).
        fit: The fit record (:class:`FitRecord`).
        markers: Every item of the release (this run's and earlier runs'), by item id.
        run_counts: This run's items by status, with ``skipped``.
        checks: Release-level checks (diagnostic content, release files, protected fraction).
        efficacy: The attached efficacy evidence, if any.
        facts: What the release is (modality, sizes, classes) for deciding whether evidence applies.
        ignored: Files ignored on purpose (hidden files, sidecars), with why.
        class_of: Item id -> class name as published ("class 1"... unless labels are published).
        env: The software environment.
        manifest: The manifest written (set by the manifest stage).
        seconds: Wall time of the run.
    """

    record: ReleaseRecord
    key_fingerprint: str
    fit: FitRecord
    markers: list[Any]
    run_counts: dict[str, int]
    checks: list[dict[str, Any]]
    efficacy: Any = None
    facts: Any = None
    ignored: list[dict[str, str]] = dataclasses.field(default_factory=list)
    class_of: dict[str, str] | None = None
    env: dict[str, Any] = dataclasses.field(default_factory=dict)
    manifest: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0


#: Version of the marker layout (``markers/<item_id>.json``); markers of older releases read the same.
MARKER_SCHEMA = 1


def _split(cls: type, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]:
    """``data`` as (the dataclass's fields, the rest, the key order)."""
    names = {f.name for f in dataclasses.fields(cls)} - {"extra", "order"}
    return ({k: v for k, v in data.items() if k in names}, {k: v for k, v in data.items() if k not in names},
            tuple(data))


def _ordered(record: Any, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` in the key order the record was read with (then any new key)."""
    out = {k: values[k] for k in record.order if k in values}
    return {**out, **{k: v for k, v in values.items() if k not in out}}


@dataclasses.dataclass(frozen=True)
class ItemMarker:
    """One item's completion record, as ``markers/<item_id>.json`` holds it (written last: an item is done when
    its marker says so).

    Fields that an item never reached stay ``None`` and are left out of the JSON, so a marker reads back exactly
    as written (:meth:`from_dict` / :meth:`to_dict`); keys this version does not know are kept in ``extra``.

    Attributes:
        item_id: PHI-free item id.
        schema: :data:`MARKER_SCHEMA` of the medue that wrote it (``None``: written before markers had one).
        status: ``done``, ``quarantined``, ``gate_failed`` or ``failed``.
        kind: Input kind (``dicom_series``, ``nifti``, ``itk``).
        skipped: Whether a resumed run found the item done and left it alone.
        reason: Why an item was not exported (short code).
        message: What went wrong and how to fix it, PHI-free.
        protection: The protection step (``params``, ``stats``, versions).
        fidelity: The fidelity report (:meth:`medue.fidelity.FidelityReport.to_dict`).
        adapted: What the fidelity gate kept of the noise (``kept_fraction``, ``amplitude_scale``), if it weakened it.
        unchanged_on_purpose: Why the item carries no pattern (a blank class), if so.
        override: The recorded fidelity override the item was exported under.
        outputs: Exported files (``path`` relative to ``release/``, ``sha256``, ``bytes``).
    """

    item_id: str
    schema: int | None = None
    kind: str | None = None
    skipped: bool | None = None
    stage_seconds: dict[str, float] | None = None
    status: str | None = None
    reason: str | None = None
    message: str | None = None
    quarantine: dict[str, Any] | None = None
    read_ahead: bool | None = None
    format: str | None = None
    modality: str | None = None
    shape: list[int] | None = None
    dtype: str | None = None
    input_sha256: list[str] | None = None
    warnings: list[str] | None = None
    protection: dict[str, Any] | None = None
    adapted: dict[str, Any] | None = None
    fidelity: dict[str, Any] | None = None
    unchanged_on_purpose: str | None = None
    override: dict[str, Any] | None = None
    outputs: list[dict[str, Any]] | None = None
    delta: dict[str, Any] | None = None
    traceback: str | None = None
    seconds: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ItemMarker":
        if not isinstance(data, dict) or "item_id" not in data:
            raise ValueError("a marker is a JSON object with an item_id")
        known, extra, _ = _split(cls, data)
        return cls(**known, extra=extra)

    @classmethod
    def read(cls, path: Path) -> "ItemMarker | None":
        """The marker at ``path``, or ``None`` when it is missing, half-written or not a marker."""
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def to_dict(self) -> dict[str, Any]:
        """The JSON mapping: set fields in declaration order, then ``extra``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra" and getattr(self, f.name) is not None}
        return {**out, **self.extra}

    def subset(self, *names: str) -> dict[str, Any]:
        """The JSON mapping of the fields ``names`` that are set (a report's or a manifest's view of the item)."""
        full = self.to_dict()
        return {k: full[k] for k in names if k in full}

    @property
    def exported(self) -> bool:
        """Whether the item's files are in the release."""
        return self.status == DONE

    @property
    def weakened(self) -> bool:
        """Exported with less noise than the method gave (the fidelity gate thinned or scaled it)."""
        return self.exported and self.adapted is not None

    @property
    def protected_in_full(self) -> bool:
        """Exported with all of its pattern."""
        return self.exported and self.adapted is None and self.unchanged_on_purpose is None

    @property
    def within_budget(self) -> bool:
        """The largest change is within the method's L-inf budget (no protection step: nothing to exceed)."""
        if self.protection is None:
            return True
        return self.protection["stats"]["linf_units"] <= self.protection["params"]["epsilon"]

    @property
    def gate_passed(self) -> bool:
        """Passed the fidelity gate, or was exported under a recorded override."""
        return bool((self.fidelity or {}).get("passed") or self.override)


@dataclasses.dataclass(frozen=True)
class EfficacyRow:
    """One attacker's training run in an efficacy result: what it trained on, how well it fitted, what it scored.

    Attributes:
        architecture: Network layout (``resnet18``, ``densenet121``, ``plain_cnn``...).
        training_data: ``clean`` (the baseline), ``protected`` (the released files) or ``clean_part`` (a mixing
            attack's clean images alone, trained for as many steps as the mix).
        clean_test_accuracy: Accuracy on clean held-out images.
        train_accuracy: Accuracy on its own training set.
        fit: Whether the model fitted its training set (a run that did not fit proves no protection).
        seed: Training seed.
        attack: The attack's name in the catalogue (results before the suite have none: :meth:`key`).
        habit: The kind of habit the attack stands for (``plain``, ``augmentation``, ``purification``...).
        augmentation: Augmentation recipe.
        countermeasure: Purification applied before training.
    """

    architecture: str
    training_data: str
    clean_test_accuracy: float
    train_accuracy: float
    fit: bool
    seed: int = 0
    attack: str | None = None
    habit: str | None = None
    augmentation: str = "none"
    countermeasure: str = "none"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    order: tuple[str, ...] = dataclasses.field(default=(), repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EfficacyRow":
        known, extra, order = _split(cls, data)
        return cls(**known, extra=extra, order=order)

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "order")}
        values = {k: v for k, v in values.items() if k in self.order or v is not None}
        return _ordered(self, {**values, **self.extra})

    @property
    def key(self) -> str:
        """The attack this row belongs to: ``attack``, or (results before the suite) architecture, augmentation
        and countermeasure."""
        if self.attack:
            return self.attack
        cm = self.countermeasure
        return f"{self.architecture}_{self.augmentation}" + ("" if cm == "none" else f"_{cm}")


@dataclasses.dataclass(frozen=True)
class EfficacyResult:
    """What ``medue evaluate`` wrote: a release attacked with the true labels, one row per training run.

    Attributes:
        schema: Result schema (:data:`medue.evidence.RESULT_SCHEMA`).
        name: Result name.
        method: The protection method of the release attacked.
        params: Its resolved parameters.
        dataset: The data (``name``, ``modality``, ``train``, ``test``, ``classes``, ``majority_class_accuracy``...).
        image_size: ``[rows, columns]`` the attackers trained at.
        labels_used: Whether the release was given its labels.
        self_evaluation: A site's own release attacked on its held-out part (``medue evaluate --self``).
        release_config_hash: The config hash of that release (self-evaluations only).
        settings: Training settings (``suite``, epochs...).
        rows: The runs.
        not_run: Attacks of the suite that were not run.
        diagnostic: Per architecture, the diagnostic-content check of the clean-trained models.
        attacks: Per attack, what it does in words.
    """

    schema: str | None = None
    name: str = ""
    method: str | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: dict[str, Any] = dataclasses.field(default_factory=dict)
    image_size: list[int] = dataclasses.field(default_factory=list)
    labels_used: bool = False
    self_evaluation: bool = False
    release_config_hash: str | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    rows: tuple[EfficacyRow, ...] = ()
    not_run: list[str] = dataclasses.field(default_factory=list)
    diagnostic: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    attacks: dict[str, str] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    order: tuple[str, ...] = dataclasses.field(default=(), repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EfficacyResult":
        known, extra, order = _split(cls, data)
        known = {k: v for k, v in known.items() if v is not None or k in ("schema", "method",
                                                                             "release_config_hash")}
        rows = tuple(EfficacyRow.from_dict(r) for r in known.pop("rows", None) or [])
        return cls(**known, rows=rows, extra=extra, order=order)

    @classmethod
    def read(cls, path: Path) -> "EfficacyResult":
        """The result at ``path`` (``ValueError`` when it is not JSON or not a result object)."""
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, found {type(data).__name__}")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON mapping, keys in the order the result was read with."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("extra", "order"):
                continue
            value = getattr(self, f.name)
            if f.name not in self.order and (value is None or value == f.default
                                            or (f.default_factory is not dataclasses.MISSING  # type: ignore[misc]
                                                and value == f.default_factory())):  # type: ignore[misc]
                continue  # a field the file did not have stays out
            values[f.name] = [r.to_dict() for r in value] if f.name == "rows" else value
        return _ordered(self, {**values, **self.extra})
