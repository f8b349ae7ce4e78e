"""Typed records that cross layers: what the audit layer is told about a release's configuration.

The pipeline builds a :class:`ReleaseRecord` from its validated config (``PipelineConfig.record()``) and hands it
to the manifest, the report and the tracking sink, so that ``audit/`` never imports ``pipeline/``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


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
