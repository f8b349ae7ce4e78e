"""``medue init FOLDER``: a commented pipeline config and a labels table for a site's own folder.

The config starts from the shipped default (``method: lines`` with no params: the measured default) and says, next
to each setting, what to change. The labels table lists every item medue finds in the folder, one row each
(``path,label``), with the class taken from the first sub-folder when the folder is laid out one folder per class,
else empty for the site to fill in (an empty label is reported by ``medue check``, with every other problem).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from medue.errors import InvalidConfigError
from medue.io import discover_inputs
from medue.labels import resolve_labels


@dataclass(frozen=True)
class InitResult:
    """What :func:`init_site` wrote and found."""

    config: Path
    labels: Path
    items: int
    classes: tuple[str, ...]
    unlabelled: int


def _table_path(item_paths: tuple[str, ...], root: Path, kind: str) -> str:
    """The id a labels table uses for an item: its file, or for a DICOM series its folder."""
    first = Path(item_paths[0])
    target = first.parent if kind == "dicom" and len(item_paths) > 1 else first
    return target.relative_to(root).as_posix()


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _name(folder: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", folder.resolve().name).strip("-").lower() or "release"


CONFIG_TEMPLATE = """\
# medue pipeline config for {folder_name} (written by `medue init`; every key: pipelines/README.md).
# Check it with `medue check {config_name}`, then release with `medue run {config_name}`.
version: 1
name: {name}
input: {input}                 # the folder to release (relative paths are relative to this file)
output: {output}               # release/ is what you publish; private/ (keys, deltas, ids) stays at the site
deidentification: refuse       # refuse any DICOM instance that still carries identifying attributes
uid_mode: keyed                # new UIDs derived from the key: the same input gives the same UIDs on a rerun
key:
  env: MEDUE_KEY               # the site's secret; set it in the environment (or name a key.file, mode 600)
labels:
  source: table                # the class of every item: error-minimising noise is a shortcut for a labelling
  table: {labels}              # path,label per item; fill in every empty label (or use source: folder)
protect:
  method: lines                # no params: the measured default; what it stops: README, "What protection does"
  # preset: fields-32db        # instead of method: a low-frequency field that augmenting attackers keep, at a
  #                            # visible cost (PSNR >= 32 dB); remove the fidelity block below with it (`medue methods`)
  reversible: true             # keep private deltas so an authorised partner can restore the originals exactly
fidelity:                      # an item that misses one of these is not exported (exit 3) unless overridden
  min_psnr_db: 38
  min_ssim: 0.95
  max_abs_units: 8
  max_abs_physical: 10         # HU for CT, scanner units otherwise
execution:
  device: auto                 # a GPU when there is one, else the CPU: the same release either way
  workers: 1
tracking:
  enabled: true                # MLflow, embedded SQLite under output/mlflow unless tracking.uri is set
report:
  enabled: true
"""


def init_site(folder: str | Path, *, config: str | Path | None = None, labels: str | Path | None = None,
              output: str | Path | None = None, force: bool = False) -> InitResult:
    """Write a config and a labels table for ``folder`` and return what was written.

    Args:
        folder: The site's input folder.
        config: Where the config goes (default ``<folder name>.yaml`` in the current folder).
        labels: Where the labels table goes (default ``<folder name>_labels.csv`` beside the config).
        output: The release's output folder (default ``out/<folder name>`` beside the config).
        force: Overwrite files that exist.

    Raises:
        InvalidConfigError: the folder does not exist or holds nothing medue reads, or a file exists without
            ``force`` (every problem at once).
    """
    root = Path(folder).expanduser().resolve()
    name = _name(root)
    config_path = Path(config or f"{name}.yaml").expanduser().resolve()
    labels_path = Path(labels).expanduser().resolve() if labels else config_path.with_name(f"{name}_labels.csv")
    output_path = Path(output).expanduser().resolve() if output else config_path.parent / "out" / name
    problems = []
    if not root.is_dir():
        raise InvalidConfigError([f"{folder}: not a folder; give the folder that holds the images to release"])
    if config_path == labels_path:
        problems.append(f"--config and --labels are the same file ({config_path}); give two names")
    for what, path in (("input folder", root), ("config", config_path), ("labels table", labels_path),
                       ("output folder", output_path)):
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            problems.append(f"the {what} {os.fsencode(path)!r} has a name that is not UTF-8, which a config cannot "
                            "hold; rename it (or link it under a UTF-8 name) and run medue init again")
    for path in (config_path, labels_path):
        if path.exists() and not force:
            problems.append(f"{path} exists; choose another name or pass --force to overwrite it")
    if problems:
        raise InvalidConfigError(problems)
    items = [it for it in discover_inputs(root) if not it.problem]
    if not items:
        problems.append(f"{folder}: medue finds no DICOM, NIfTI, MHA or NRRD item in it (`medue inspect {folder}` "
                        "lists what it finds and why each file is skipped)")
    if problems:
        raise InvalidConfigError(problems)
    # the classes as `labels.source: folder` reads them, when that source labels every item with two classes or more
    folders, folder_problems = resolve_labels(items, root=root, source="folder")
    by_folder = folders is not None and not folder_problems
    rows = sorted((_table_path(it.paths, root, it.kind), it.item_id) for it in items)
    unnamed = [path for path, _ in rows if not _utf8(path)]
    if unnamed:
        raise InvalidConfigError([
            f"{len(unnamed)} item(s) have names that are not UTF-8 (first: {os.fsencode(unnamed[0])!r}), which a "
            "labels table cannot hold; rename them (or link them under UTF-8 names) and run medue init again"])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label"])
    for path, item_id in rows:
        writer.writerow([path, folders.classes[folders.by_item[item_id]] if by_folder else ""])
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    labels_path.write_text(buf.getvalue(), encoding="utf-8")

    def rel(p: Path) -> str:
        # a YAML double-quoted scalar (JSON's escapes are YAML's): '#', ':', quotes or a newline in a name stay in it
        return json.dumps(Path(os.path.relpath(p, config_path.parent)).as_posix(), ensure_ascii=False)

    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(CONFIG_TEMPLATE.format(
        folder_name=json.dumps(root.name, ensure_ascii=False), name=name,
        config_name=json.dumps(config_path.name, ensure_ascii=False), input=rel(root), output=rel(output_path),
        labels=rel(labels_path)), encoding="utf-8")
    return InitResult(config=config_path, labels=labels_path, items=len(rows),
                      classes=folders.classes if by_folder else (), unlabelled=0 if by_folder else len(rows))
