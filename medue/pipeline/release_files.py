"""The release folder as a function of the current inputs: items that left the release are withdrawn from it, and a
file the manifest does not list is named, never published silently."""

from __future__ import annotations

from typing import Any, Iterable

from medue.layout import OutputLayout
from medue.records import ItemMarker

#: The release's own documents (beside the item outputs the manifest lists).
DOCUMENTS = ("manifest.json", "SHA256SUMS", "report.html", "report.json")


def withdraw_stale(layout: OutputLayout, current: Iterable[str]) -> list[str]:
    """Remove every item that has a marker but is no longer an input of this release (taken out of the input folder
    or the labels table, consent withdrawn, newly held out): its released files (and their emptied folders), its
    private delta, preview and fitted noise, and its marker. Returns the withdrawn item ids, sorted."""
    keep = set(current)
    root = layout.release.resolve()
    withdrawn = []
    for path in sorted(layout.markers.glob("*.json")):
        marker = ItemMarker.read(path)
        item_id = marker.item_id if marker is not None else path.stem
        if item_id in keep:
            continue
        for out in (marker.outputs or []) if marker is not None else []:
            target = (layout.release / out["path"]).resolve()
            if target.is_relative_to(root) and target.is_file():
                target.unlink()
                for parent in target.parents:  # a DICOM series folder left empty goes too
                    if parent == root or not parent.is_relative_to(root) or any(parent.iterdir()):
                        break
                    parent.rmdir()
        for private in ("deltas", "previews", "noise"):
            (layout.private / private / f"{item_id}.npz").unlink(missing_ok=True)
        path.unlink()
        withdrawn.append(item_id)
    return withdrawn


def stray_files(layout: OutputLayout, manifest: dict[str, Any]) -> list[str]:
    """Files under ``release/`` that are neither an output the manifest lists nor one of :data:`DOCUMENTS` (a file
    put there by hand, a restored original): relative paths, sorted."""
    listed = {out["path"] for entry in manifest.get("items", []) for out in entry.get("outputs", [])}
    return sorted(rel for p in layout.release.rglob("*") if p.is_file()
                  and (rel := p.relative_to(layout.release).as_posix()) not in listed and rel not in DOCUMENTS)


def release_files_check(withdrawn: list[str], strays: list[str]) -> dict[str, Any]:
    """The report's line on what ``release/`` holds: withdrawn items, and any file nobody listed (which fails)."""
    check: dict[str, Any] = {"check": "release/ holds exactly the current inputs' outputs and the release's documents",
                             "result": "fail" if strays else "pass", "items": len(withdrawn)}
    notes = []
    if withdrawn:
        notes.append(f"{len(withdrawn)} item(s) withdrawn since the last run (no longer inputs): their files were "
                     f"removed from release/: {', '.join(withdrawn[:20])}" + (" ..." if len(withdrawn) > 20 else ""))
    if strays:
        notes.append(f"{len(strays)} file(s) in release/ that the manifest does not list (remove them, or publish "
                     f"nothing until they are explained): {', '.join(strays[:20])}" + (" ..." if len(strays) > 20
                                                                                        else ""))
        check["stray_files"] = strays
    if notes:
        check["note"] = "; ".join(notes)
    check["withdrawn"] = withdrawn
    return check


__all__ = ["DOCUMENTS", "release_files_check", "stray_files", "withdraw_stale"]
