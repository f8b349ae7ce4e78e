"""The medue exception hierarchy: every error medue raises on purpose is defined here."""

from __future__ import annotations

from typing import Any, Sequence


class MedueError(Exception):
    """Base class for all errors raised by medue."""


class IngestError(MedueError):
    """An input could not be read into a :class:`~medue.volume.Volume`.

    Attributes:
        source: The path (or series description) that failed.
        reason: A short, PHI-free machine-readable reason code (e.g. ``"truncated"``).
    """

    def __init__(self, message: str, *, source: str = "", reason: str = "unreadable") -> None:
        super().__init__(message)
        self.source = source
        self.reason = reason


class InvalidVolumeError(MedueError, ValueError):
    """A volume's array or geometry violates an invariant."""


class InvalidConfigError(MedueError, ValueError):
    """A pipeline configuration is invalid. ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: Sequence[str], *, source: str = "config") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


class UnknownComponentError(MedueError, ValueError):
    """A registry key does not name a registered component."""


class MissingDependencyError(MedueError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class ProtectionError(MedueError):
    """A protector could not produce a valid perturbation."""


class FidelityCheckFailed(MedueError):
    """The clinical-utility gate failed and no override was recorded. ``report`` carries the details."""

    def __init__(self, message: str, *, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class ExportError(MedueError):
    """Writing or verifying an output failed; nothing partial was left in the output folder."""


class DeidentificationError(IngestError):
    """Input does not declare de-identification and the policy is ``refuse``."""

    def __init__(self, message: str, *, source: str = "") -> None:
        super().__init__(message, source=source, reason="not_deidentified")
