"""Where a release's files go: the output folder's layout and the marker statuses.

Below both :mod:`medue.pipeline` (which writes the files) and :mod:`medue.audit` (which reads them for the
manifest, report and MLflow), so neither imports the other for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Marker statuses.
DONE, QUARANTINED, GATE_FAILED, FAILED = "done", "quarantined", "gate_failed", "failed"


@dataclass(frozen=True)
class OutputLayout:
    """Folders under the job's output root.

    ``release/`` is what gets published; ``private/`` stays at the site (protector state, deltas, the
    input index with original paths, previews); ``markers/`` and ``quarantine/`` drive resume and triage.
    """

    root: Path

    @property
    def release(self) -> Path:
        return self.root / "release"

    @property
    def private(self) -> Path:
        return self.root / "private"

    @property
    def markers(self) -> Path:
        return self.root / "markers"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def marker(self, item_id: str) -> Path:
        return self.markers / f"{item_id}.json"

    @property
    def protector_state(self) -> Path:
        return self.private / "protector.pt"

    @property
    def fit_record(self) -> Path:
        """The fit record (:class:`medue.records.FitRecord`)."""
        return self.private / "protector.json"

    def make_private(self) -> None:
        """Create ``private/`` and ``quarantine/`` readable by the owner alone (mode 700: they hold the site's
        paths, deltas and copies of inputs), and tighten them when an earlier run left them open."""
        for folder in (self.private, self.quarantine):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)


__all__ = ["DONE", "FAILED", "GATE_FAILED", "OutputLayout", "QUARANTINED"]
