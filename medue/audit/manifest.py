"""The release manifest: SHA-256 of every input and output, one entry per item, written atomically."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

from medue._version import __version__
from medue.io.atomic import write_text_atomic
from medue.layout import OutputLayout
from medue.records import ReleaseOutcome

MANIFEST_SCHEMA = "medue.manifest/1"


def write_manifest(layout: OutputLayout, outcome: ReleaseOutcome) -> dict[str, Any]:
    """Write ``release/manifest.json`` and a first ``release/SHA256SUMS`` (``sha256sum -c`` compatible) for
    ``outcome``'s items; returns the manifest (also set on ``outcome``)."""
    config, markers, fit_info, key_fingerprint = (outcome.record, outcome.markers, outcome.fit,
                                                  outcome.key_fingerprint)
    items = []
    for m in sorted(markers, key=lambda m: m.item_id):
        entry = {"item_id": m.item_id, "status": m.status, "input_sha256": m.input_sha256 or [],
                 "outputs": m.outputs or []}
        if m.fidelity is not None:
            f = m.fidelity
            entry["fidelity"] = {k: f.get(k) for k in ("psnr_db", "ssim", "max_abs_units", "max_abs_physical",
                                                       "fraction_changed", "data_range", "passed")}
        if m.override:
            entry["override"] = m.override
        if not m.exported:
            entry["reason"] = m.reason or ""
        items.append(entry)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "release": config.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "medue_version": __version__,
        "config_hash": config.config_hash,
        "method": config.method,
        "key_fingerprint": key_fingerprint,
        "protector_state_fingerprint": fit_info.state_fingerprint,
        "items": items,
        # the release's own documents: SHA256SUMS lists these and every item output, the same files as here (the
        # documents carry no hash here: the reports are written after the manifest, and no file holds its own hash)
        "documents": ["manifest.json"] + (["report.html", "report.json"] if config.report_enabled else []),
    }
    layout.release.mkdir(parents=True, exist_ok=True)
    write_text_atomic(layout.release / "manifest.json", json.dumps(manifest, indent=2))
    write_checksums(layout, manifest)
    outcome.manifest = manifest
    return manifest


def write_checksums(layout: OutputLayout, manifest: dict[str, Any]) -> None:
    """``release/SHA256SUMS`` over every output file and the release's own documents (manifest, reports).

    Written last, after the reports; ``cd release && sha256sum -c SHA256SUMS`` checks the whole release.
    """
    from medue.provenance import sha256_file

    sums = [f"{o['sha256']}  {o['path']}" for i in manifest["items"] for o in i.get("outputs", [])]
    for name in manifest.get("documents", ["manifest.json"]):
        if (layout.release / name).is_file():
            sums.append(f"{sha256_file(layout.release / name)}  {name}")
    write_text_atomic(layout.release / "SHA256SUMS", "\n".join(sorted(sums)) + ("\n" if sums else ""))
