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


#: Version of the marker layout (``markers/<item_id>.json``); markers of older releases read the same.
MARKER_SCHEMA = 1


@dataclasses.dataclass(frozen=True)
class ItemMarker:
    """One item's completion record, as ``markers/<item_id>.json`` holds it (written last: an item is done when
    its marker says so).

    Fields that an item never reached stay ``None`` and are left out of the JSON, so a marker reads back exactly
    as written (:meth:`from_dict` / :meth:`to_dict`); keys this version does not know are kept in ``extra``.

    Attributes:
        item_id: PHI-free item id.
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
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        if "item_id" not in data:
            raise ValueError("a marker needs an item_id")
        return cls(**{k: v for k, v in data.items() if k in names},
                   extra={k: v for k, v in data.items() if k not in names})

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
