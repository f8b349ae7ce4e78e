"""Efficacy evidence: what a ``medue evaluate`` result says, and whether it belongs to a given release.

A result (schema :data:`RESULT_SCHEMA`) measured one release of one dataset. It is this release's evidence only
when it measured the same method with every same parameter *and* data like this release's: the same modality, the
same image size and the same class names (:class:`ReleaseFacts`, :func:`evidence_applies`). A self-evaluation
(``medue evaluate --holdout``) measured this very release on its own held-out items and applies to it alone.
Otherwise the report calls it "evidence from <dataset>, not measured on this release" and every check that rests on
it reads "not tested".

The verdict (:func:`verdict`) counts an attack as stopped only when the *worst* seed of every fitted run stays at or
below :data:`TARGET` clean-test accuracy, and lists in words what the protection stops, what it does not stop, and
what nobody tested. This module imports nothing of medue's pipeline or report, so both can use it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np

from medue.records import EfficacyResult, EfficacyRow

RESULT_SCHEMA = "medue.release_efficacy/1"

#: "Protects against": the worst seed's clean-test accuracy at or below this (chance is 0.50 on two balanced classes).
TARGET = 0.60
#: A mixing attack (release plus clean images from elsewhere) is held when the mixed model beats the same clean images
#: trained alone for as many steps by at most this much: the protected part then taught it (almost) nothing.
MIX_MARGIN = 0.02

#: What no attacker suite runs (:data:`medue.efficacy.suite.NOT_TESTED`).
NEVER_TESTED = (
    "fine-tuning a network pretrained on other images",
    "self-supervised pretraining on the release, then a classifier",
    "3D models trained on whole volumes",
    "segmentation and other tasks than the release's classification",
    "labels other than the release's (other classes, other groupings)",
)


@dataclasses.dataclass(frozen=True)
class ReleaseFacts:
    """What a release holds, to compare with a result's dataset.

    Attributes:
        modalities: DICOM modalities of the release's items (``"OT"`` where the format has none, such as NIfTI).
        image_sizes: In-plane sizes ``(rows, columns)`` of its items.
        classes: Its label classes (sorted), empty without labels.
        config_hash: The release config's hash (a self-evaluation applies to its own release only).
    """

    modalities: tuple[str, ...] = ()
    image_sizes: tuple[tuple[int, int], ...] = ()
    classes: tuple[str, ...] = ()
    config_hash: str = ""

    @classmethod
    def from_items(cls, items: Iterable[dict[str, Any]], classes: Iterable[str] = (), config_hash: str = ""
                   ) -> "ReleaseFacts":
        """Facts from item records carrying ``modality`` and ``shape`` (``(z, y, x)`` or ``(y, x)``)."""
        items = list(items)
        mods = sorted({str(i.get("modality") or "OT") for i in items})
        sizes = sorted({tuple(int(v) for v in i["shape"][-2:]) for i in items if i.get("shape")})
        return cls(tuple(mods), tuple(sizes), tuple(sorted(classes)), config_hash)


def _param_differences(evaluated: dict[str, Any], params: dict[str, Any], method: str) -> list[str]:
    try:  # a parameter added to medue after the evaluation ran behaved as its default there
        from medue.protect import PROTECTORS

        defaults = PROTECTORS.get(method)().params()
    except Exception:  # an unknown method: compare the values as they are
        defaults = {}
    try:  # settings the protection does not read as configured (an optimiser's, when nothing is optimised)
        from medue.protect import build_protector

        inert = build_protector(method, **params).inert_params()
    except Exception:
        inert = frozenset()
    return sorted(k for k in set(params) | set(evaluated) if params.get(k) != evaluated.get(k) and k not in inert
                  and not (k not in evaluated and k in defaults and params.get(k) == defaults[k]))


def evidence_applies(result: EfficacyResult, method: str, params: dict[str, Any],
                     facts: ReleaseFacts | None = None) -> tuple[bool, str]:
    """Whether ``result`` measured this release's method, parameters and kind of data; if not, why not.

    Without ``facts`` only the method and parameters are compared (a caller that knows no data).
    """
    if result.schema != RESULT_SCHEMA:
        return False, ("the attached results are not a release evaluation (schema "
                       f"{result.schema!r}); re-run `medue evaluate CONFIG --dataset ...`")
    if result.method != method:
        return False, f"the attached results measured method {result.method!r}, this release uses {method!r}"
    differing = _param_differences(result.params, params, method)
    if differing:
        return False, ("measured with other protector parameters (" + ", ".join(
            f"{k}: {result.params.get(k)!r} there, {params.get(k)!r} here" for k in differing[:6]) + ")")
    if facts is None:
        return True, ""
    if result.self_evaluation:
        if result.release_config_hash != facts.config_hash:
            return False, "a self-evaluation of another release (its config hash differs)"
        return True, ""
    d = result.dataset
    problems = []
    theirs_mod = d.get("modality")
    if theirs_mod is None or set(facts.modalities) != {theirs_mod}:
        problems.append(f"modality {theirs_mod or 'unknown'} there, {', '.join(facts.modalities) or 'unknown'} here")
    size = tuple(result.image_size)
    if not facts.image_sizes or any(tuple(s) != size for s in facts.image_sizes):
        problems.append(f"image size {'x'.join(map(str, size)) or 'unknown'} there, "
                        + (", ".join("x".join(map(str, s)) for s in facts.image_sizes[:4]) or "unknown") + " here")
    theirs_cls = sorted(d.get("classes") or [])
    if theirs_cls != list(facts.classes):
        problems.append(f"classes {', '.join(theirs_cls) or 'none'} there, "
                        f"{', '.join(facts.classes) or 'no labels'} here")
    if problems:
        return False, f"evidence from {d.get('name', '?')}, not measured on this release (" + "; ".join(problems) + ")"
    return True, ""


def describe(result: EfficacyResult) -> str:
    """One line naming the dataset, size, method, labels and suite of a result."""
    d = result.dataset
    size = "x".join(str(v) for v in result.image_size)
    own = "this release's own held-out items, " if result.self_evaluation else ""
    return (f"{own}{d.get('name', '?')} ({d.get('modality', 'modality unknown')}, {d.get('format', '?')}, {size} px, "
            f"{d.get('train', '?')} train / {d.get('test', '?')} test), method {result.method}, labels "
            f"given to the release: {'yes' if result.labels_used else 'no'}, suite "
            f"{result.settings.get('suite', 'custom')}, result {result.name}")


def summarise(result: EfficacyResult) -> list[dict[str, Any]]:
    """One line per attack: clean baseline, protected mean / worst / best over the seeds whose model fitted its
    training set, runs that did not fit and the best clean-test accuracy among those (``unfit_max``)."""
    groups: dict[str, dict[str, Any]] = {}
    for r in result.rows:
        g = groups.setdefault(r.key, {"first": r, "clean": [], "protected": [], "clean_part": [], "unfit": 0,
                                      "train": [], "unfit_protected": []})
        if not r.fit and r.training_data != "clean_part":
            if r.training_data == "protected":  # a clean baseline that did not fit is no run of the release
                g["unfit"] += 1
                g["unfit_protected"].append(r.clean_test_accuracy)
            continue
        g.setdefault(r.training_data, []).append(r)
        if r.training_data == "protected":
            g["train"].append(r.train_accuracy)
    out = []
    for name, g in groups.items():
        first: EfficacyRow = g["first"]
        prot = [r.clean_test_accuracy for r in g["protected"]]
        clean = [r.clean_test_accuracy for r in g["clean"]]
        part = [r.clean_test_accuracy for r in g["clean_part"]]
        out.append({"attack": name, "habit": first.habit or ("plain" if first.countermeasure == "none"
                                                             else "purification"),
                    "architecture": first.architecture, "augmentation": first.augmentation,
                    "countermeasure": first.countermeasure,
                    "clean": round(float(np.mean(clean)), 4) if clean else None,
                    # a mixing attack's clean images alone, trained as long: the release's share is the difference
                    "clean_part": round(float(np.mean(part)), 4) if part else None,
                    "protected_mean": round(float(np.mean(prot)), 4) if prot else None,
                    "protected_max": round(float(np.max(prot)), 4) if prot else None,
                    "protected_min": round(float(np.min(prot)), 4) if prot else None,
                    "train_min": round(float(np.min(g["train"])), 4) if g["train"] else None,
                    # a model that did not fit its training set proves no protection, but what it learned all the
                    # same (high clean-test accuracy) proves that the protection failed
                    "unfit_max": round(float(np.max(g["unfit_protected"])), 4) if g["unfit_protected"] else None,
                    "protected_runs": len(prot), "unfit_runs": g["unfit"]})
    return out


def verdict(result: EfficacyResult, *, method: str, params: dict[str, Any], facts: ReleaseFacts | None = None,
            target: float = TARGET) -> dict[str, Any]:
    """Plain lists from a result: what the release is protected against, what not, and what was not tested.

    An attack is "protected against" when its worst fitted protected run is at or below ``target``. It is "not
    protected against" when any run exceeds ``target``, a run whose model did not fit its training set included (it
    learned that much all the same). An attack whose runs all failed to fit and stayed at or below ``target``, and
    everything in :data:`NEVER_TESTED`, is "not tested". When the
    result is not this release's evidence (:func:`evidence_applies`), nothing is "protected against": every measured
    attack moves to "not tested" and ``note`` says whose evidence it is.
    """
    applies, why = evidence_applies(result, method, params, facts)
    out: dict[str, Any] = {"evidence": describe(result), "applies": applies, "own": result.self_evaluation,
                           "target": target, "protects_against": [], "does_not_protect_against": [],
                           "not_tested": []}
    if not applies:
        out["note"] = why if why.startswith("evidence from") else "not measured for this release: " + why
    for s in summarise(result):
        words = s["attack"]
        clean = "not tested" if s["clean"] is None else f"{s['clean']:.3f}"
        worst = max(v for v in (s["protected_max"], s["unfit_max"], -1.0) if v is not None)
        if worst < 0:
            out["not_tested"].append(words)
            continue
        if not applies:
            out["not_tested"].append(f"{words} (measured on other data: {worst:.3f})")
        elif s["protected_max"] is None and worst <= target:
            out["not_tested"].append(f"{words} (no run fitted its training set)")
        elif worst > target and (s["protected_max"] is None or s["protected_max"] <= target):
            out["does_not_protect_against"].append(
                f"{words}: {worst:.3f} by a model that did not fit its training set (it learned that much all the "
                f"same) vs {clean} on clean data")
        elif s["clean_part"] is not None and s["protected_max"] is not None:
            added = s["protected_max"] - s["clean_part"]
            text = (f"{words}: worst seed {s['protected_max']:.3f} vs {s['clean_part']:.3f} from its clean images "
                    f"alone (the release adds {added:+.3f}) and {clean} on clean data")
            out["protects_against" if added <= MIX_MARGIN else "does_not_protect_against"].append(text)
        else:
            text = (f"{words}: worst seed {s['protected_max']:.3f} (of {s['protected_runs']} fitted runs; best "
                    f"{s['protected_min']:.3f}) vs {clean} on clean data")
            out["protects_against" if worst <= target else "does_not_protect_against"].append(text)
    out["not_tested"] += list(NEVER_TESTED)
    for name in result.not_run:
        out["not_tested"].append(name)
    return out
