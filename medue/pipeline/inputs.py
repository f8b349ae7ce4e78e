"""A release's inputs with their labels: discovery, the held-out part, and the facts evidence is matched on."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

from medue.device import derive_seed
from medue.evidence import ReleaseFacts
from medue.io import InputItem, discover_inputs, peek
from medue.io.atomic import write_text_atomic
from medue.layout import OutputLayout
from medue.pipeline.config import PipelineConfig


def labelled_inputs(config: PipelineConfig, ignored: list[dict[str, str]], key: str | None = None
                     ) -> tuple[list[InputItem], Any, list[InputItem]]:
    """The release's inputs (files skipped on purpose go to ``ignored``), each with its label, the labels, and the
    held-out items.

    With ``labels.holdout`` the held-out items (:func:`holdout_ids`, drawn with ``key``) are left out of the first
    list: they are never fitted on or exported.
    """
    items = discover_inputs(config.input_path, ignored=ignored)
    labels = config.read_labels(items)
    held: list[InputItem] = []
    if labels is not None:
        items = [dataclasses.replace(it, label=labels.by_item.get(it.item_id)) for it in items]
    if config.labels.holdout and labels is not None:
        ids = holdout_ids(labels, config.labels.holdout, key or config.read_key())
        held = [it for it in items if it.item_id in ids]
        items = [it for it in items if it.item_id not in ids]
    return items, labels, held


def class_names(labels: Any, *, named: bool) -> dict[str, str] | None:
    """Item id -> class, for the report's per-class counts (``None`` for an unlabelled release). The class names
    themselves only with ``named`` (``labels.include_in_release``); otherwise "class 1", "class 2"… in the order of
    the sorted names, so that a published report carries no label the site keeps private."""
    if labels is None:
        return None
    return {item_id: labels.classes[c] if named else f"class {c + 1}" for item_id, c in labels.by_item.items()}


def release_facts(items: list[InputItem], labels: Any, config: PipelineConfig) -> ReleaseFacts:
    """Modality, in-plane sizes and classes of a release's readable items, from their headers (no pixels read), to
    decide whether an efficacy result is this release's evidence."""
    peeked = [p for it in items if not it.problem and (p := peek(it)) is not None]
    return ReleaseFacts.from_items([{"modality": m, "shape": s} for m, s in peeked],
                                   classes=labels.classes if labels is not None else (),
                                   config_hash=config.config_hash())


def holdout_ids(labels: Any, fraction: float, key: str) -> set[str]:
    """The items kept clean and unreleased: ``round(fraction * n)`` of each class's ``n`` labelled items (at least
    one where a class has two or more), ranked by a key-derived hash of the item id, so the same release always
    holds out the same items and nobody without the key can tell which."""
    held: set[str] = set()
    for c in range(len(labels.classes)):
        ids = sorted((i for i, lab in labels.by_item.items() if lab == c), key=lambda i: derive_seed(key, "holdout", i))
        n = int(round(fraction * len(ids)))
        if fraction > 0 and len(ids) >= 2:
            n = min(max(n, 1), len(ids) - 1)
        held.update(ids[:n])
    return held


def write_holdout(layout: OutputLayout, config: PipelineConfig, labels: Any, held: list[InputItem],
                   say: Callable[[str], None]) -> None:
    """``private/holdout.local.json``: the held-out items (id, class, paths) that ``medue evaluate --self`` tests on."""
    record = {"fraction": config.labels.holdout, "classes": list(labels.classes),
              "items": {it.item_id: {"label": labels.classes[it.label], "kind": it.kind, "paths": list(it.paths)}
                        for it in sorted(held, key=lambda it: it.item_id)}}
    write_text_atomic(layout.private / "holdout.local.json", json.dumps(record, indent=2))
    say(f"held out {len(held)} labelled item(s) ({config.labels.holdout:.0%} of each class): never fitted or "
        "exported; listed in private/holdout.local.json for `medue evaluate --self`")

