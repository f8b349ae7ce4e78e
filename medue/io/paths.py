"""How readers name their inputs in records: relative to the input root, never an absolute site path."""

from __future__ import annotations

from pathlib import Path


def relative_label(path: str | Path, root: Path | None) -> str:
    """``path`` relative to ``root`` when it lies inside it, else just its file name."""
    if root is not None:
        try:
            return str(Path(path).resolve().relative_to(Path(root).resolve()))
        except ValueError:
            pass
    return Path(path).name
