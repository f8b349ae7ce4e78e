"""Labels of a release: which class each input item belongs to (a table, folder names, or a DICOM attribute).

Labels are part of a release's input because error-minimising noise is a shortcut *for a labelling*: noise fitted
on labels the attacker never uses protects nothing. A per-volume label applies to every slice of that volume.

Sources (``labels.source`` in the pipeline config):

* ``table``: a CSV or TSV file with a header row. ``id_column`` names the column that identifies an item:
  ``path`` (a file path relative to the input folder; for a DICOM series any one of its files, or its folder),
  ``SeriesInstanceUID`` or ``StudyInstanceUID``; ``label_column`` holds the class.
* ``folder``: the name of the first folder under the input folder (``input/tumor/x.nii`` and
  ``input/tumor/series_7/1.dcm`` -> ``tumor``), the usual one-folder-per-class layout.
* ``dicom_attribute``: the value of a DICOM attribute (keyword, e.g. ``BodyPartExamined``) of a series' first
  instance; only for DICOM items.

Labels stay at the site: they are written to ``private/labels.local.json``, never into file names, and into
``release/`` only when ``labels.include_in_release`` is true.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

LABEL_SOURCES = ("table", "folder", "dicom_attribute")
ID_COLUMNS = ("path", "SeriesInstanceUID", "StudyInstanceUID")


@dataclass(frozen=True)
class ReleaseLabels:
    """Resolved labels: ``by_item`` maps an item id to a class index into ``classes`` (sorted class names)."""

    classes: tuple[str, ...]
    by_item: dict[str, int]

    def counts(self, item_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Items per class name (of ``item_ids``, default all)."""
        ids = self.by_item.keys() if item_ids is None else item_ids
        out = {c: 0 for c in self.classes}
        for i in ids:
            if i in self.by_item:
                out[self.classes[self.by_item[i]]] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "by_item": dict(sorted(self.by_item.items()))}


def read_label_table(path: Path, id_column: str, label_column: str) -> tuple[dict[str, str], list[str]]:
    """Rows of a CSV/TSV label table as ``{id: label}``, plus the problems found (all of them)."""
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        return {}, [f"labels table {path.name}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position "
                    f"{exc.start}); save it as UTF-8 (CSV UTF-8 in a spreadsheet program)"]
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") or ("\t" in text.splitlines()[0] if text else False) \
        else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    fields = reader.fieldnames or []
    # column names are shown only when the first line looks like a header row: never a line of some other file
    header = (f"found columns {fields}" if len(fields) >= 2 and all(len(f) <= 40 for f in fields)
              else f"its first line is not a header row of column names ({len(fields)} field(s) of up to "
                   f"{max((len(f) for f in fields), default=0)} characters, not shown)")
    for col in (id_column, label_column):
        if col not in fields:
            problems.append(f"labels.table {path.name}: no column {col!r}; {header}; a labels table is CSV or TSV "
                            f"with a header row, e.g. {id_column},{label_column}")
    if problems:
        return {}, problems
    rows: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        key, value = (row.get(id_column) or "").strip(), (row.get(label_column) or "").strip()
        if not key or not value:
            problems.append(f"labels.table {path.name} line {line}: empty {id_column if not key else label_column}")
            continue
        if key in rows and rows[key] != value:
            problems.append(f"labels.table {path.name} line {line}: {key!r} is labelled both {rows[key]!r} and "
                            f"{value!r}")
        rows[key] = value
    return rows, problems


def _dicom_value(path: str, keyword: str) -> str:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[keyword] if keyword else None)
    value = ds.get(keyword, "")
    return str(value.value if hasattr(value, "value") else value).strip()


def resolve_labels(items: list[Any], *, root: Path, source: str, table: Path | None = None,
                   id_column: str = "path", label_column: str = "label", attribute: str | None = None
                   ) -> tuple[ReleaseLabels | None, list[str]]:
    """Label every readable item. Returns the labels and *every* problem (unlabelled items, unknown ids, one class).

    ``items`` are :class:`medue.io.InputItem`; items with a discovery ``problem`` are quarantined anyway and need
    no label. Problems name items by id, never by path.
    """
    problems: list[str] = []
    names: dict[str, str] = {}
    wanted = [it for it in items if not it.problem]
    if source == "table":
        if table is None or not table.is_file():
            return None, [f"labels.table: file {table} not found; give a CSV/TSV with columns {id_column!r} and "
                          f"{label_column!r}"]
        rows, problems = read_label_table(table, id_column, label_column)
        used: set[str] = set()
        for it in wanted:
            keys: list[str] = []
            if id_column == "path":
                rels = [Path(p).relative_to(root).as_posix() if Path(p).is_relative_to(root) else Path(p).name
                        for p in it.paths]
                keys = rels + sorted({str(Path(r).parent.as_posix()) for r in rels if "/" in r})
            elif it.kind == "dicom":
                try:
                    keys = [_dicom_value(it.paths[0], id_column)]
                except Exception:  # unreadable headers are quarantined by the job with their reason
                    continue
            found = [k for k in keys if k in rows]
            if found:
                names[it.item_id] = rows[found[0]]
                used.update(found)
        unknown = sorted(set(rows) - used)
        if unknown:
            problems.append(f"labels.table: {len(unknown)} row(s) match no input item (first: "
                            f"{', '.join(unknown[:3])}); check {id_column!r} values against the input folder")
    elif source == "folder":
        for it in wanted:
            rel = Path(it.paths[0]).resolve().relative_to(root.resolve()) \
                if Path(it.paths[0]).resolve().is_relative_to(root.resolve()) else Path(it.paths[0]).name
            if len(Path(rel).parts) > 1:
                names[it.item_id] = Path(rel).parts[0]
    elif source == "dicom_attribute":
        if not attribute:
            return None, ["labels.attribute: required with source 'dicom_attribute' (a DICOM keyword)"]
        for it in wanted:
            if it.kind != "dicom":
                continue
            try:
                value = _dicom_value(it.paths[0], attribute)
            except Exception:
                continue
            if value:
                names[it.item_id] = value
    else:
        return None, [f"labels.source: expected one of {', '.join(LABEL_SOURCES)}, got {source!r}"]
    missing = [it.item_id for it in wanted if it.item_id not in names]
    if missing:
        problems.append(f"labels: {len(missing)} input item(s) have no label (first ids: {', '.join(missing[:5])}); "
                        "every item of a labelled release needs one (see private/inputs.local.json for their paths)")
    classes = tuple(sorted(set(names.values())))
    if len(classes) < 2 and wanted:
        problems.append(f"labels: found {len(classes)} class(es) {list(classes)}; a labelled release needs at "
                        "least two: give a table (or folders) with two or more classes; without labels, only a "
                        "label-agnostic method (uc) can release")
    index = {c: i for i, c in enumerate(classes)}
    return ReleaseLabels(classes=classes, by_item={k: index[v] for k, v in names.items()}), problems
