"""medue: make medical imaging releases unlearnable, keep them clinically usable, and prove both."""

from __future__ import annotations

from medue._version import __version__  # noqa: E402

from medue.errors import (  # noqa: E402
    DeidentificationError,
    ExportError,
    FidelityCheckFailed,
    IngestError,
    InvalidConfigError,
    InvalidVolumeError,
    MedueError,
    MissingDependencyError,
    ProtectionError,
    UnknownComponentError,
)
from medue.provenance import StepRecord  # noqa: E402
from medue.volume import Geometry, SourceRef, Volume  # noqa: E402

__all__ = [
    "DeidentificationError",
    "ExportError",
    "FidelityCheckFailed",
    "Geometry",
    "IngestError",
    "InvalidConfigError",
    "InvalidVolumeError",
    "MedueError",
    "MissingDependencyError",
    "ProtectionError",
    "SourceRef",
    "StepRecord",
    "UnknownComponentError",
    "Volume",
    "__version__",
]
