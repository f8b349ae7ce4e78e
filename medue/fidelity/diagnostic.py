""""Diagnostic content preserved": a model trained on *clean* data must read protected images as it reads originals.

Pixel metrics (PSNR, SSIM) say the images look the same; this check says a diagnostic model still gives the same
answers. It compares the predictions of one clean-trained classifier on the original and on the protected
versions of the same held-out images: accuracy on each, the drop, and the fraction of images whose prediction
did not change (agreement). :func:`medue.efficacy.evaluate_release` computes it for each attacker's clean-trained model on the
released training images; the release pipeline reads that result and applies
``fidelity.max_diagnostic_accuracy_drop`` from its policy, only when the result measured the same method and
parameters on data like this release's (:mod:`medue.evidence`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medue.evidence import ReleaseFacts, describe, evidence_applies
from medue.records import EfficacyResult

#: One line naming a result's dataset, method and suite (kept under its earlier name).
describe_evidence = describe


def diagnostic_preservation(labels: np.ndarray, pred_original: np.ndarray, pred_protected: np.ndarray, *,
                            max_accuracy_drop: float | None = 0.02) -> dict[str, Any]:
    """Compare a clean-trained model's predictions on original vs protected versions of the same images.

    Args:
        labels: ``(N,)`` true classes.
        pred_original: ``(N,)`` predictions on the original images.
        pred_protected: ``(N,)`` predictions on the protected images (same order).
        max_accuracy_drop: Largest allowed ``accuracy_original - accuracy_protected``; ``None`` only reports.

    Returns:
        JSON-ready dict: ``accuracy_original``, ``accuracy_protected``, ``accuracy_drop``, ``agreement``,
        ``images``, ``max_accuracy_drop`` and ``passed`` (``None`` when no threshold is set).
    """
    labels, pred_original, pred_protected = (np.asarray(a).reshape(-1) for a in (labels, pred_original,
                                                                                 pred_protected))
    if not labels.size or not labels.shape == pred_original.shape == pred_protected.shape:
        raise ValueError("labels, pred_original and pred_protected must be non-empty and of one length; got "
                         f"{labels.shape}, {pred_original.shape}, {pred_protected.shape}")
    if max_accuracy_drop is not None and not 0.0 <= max_accuracy_drop <= 1.0:
        raise ValueError(f"max_accuracy_drop must be in [0, 1] or None, not {max_accuracy_drop}")
    acc_o = float((pred_original == labels).mean())
    acc_p = float((pred_protected == labels).mean())
    drop = acc_o - acc_p
    return {
        "images": int(labels.size),
        "accuracy_original": round(acc_o, 4),
        "accuracy_protected": round(acc_p, 4),
        "accuracy_drop": round(drop, 4),
        "agreement": round(float((pred_original == pred_protected).mean()), 4),
        "max_accuracy_drop": max_accuracy_drop,
        "passed": None if max_accuracy_drop is None else bool(drop <= max_accuracy_drop + 1e-12),
    }


DIAGNOSTIC_CHECK = "diagnostic content preserved (clean-trained model on released vs original images)"


def efficacy_applies(efficacy: EfficacyResult, method: str, params: dict[str, Any],
                     facts: ReleaseFacts | None = None) -> tuple[bool, str]:
    """Whether a release-efficacy result is this release's evidence (:func:`medue.evidence.evidence_applies`)."""
    return evidence_applies(efficacy, method, params, facts)


#: A clean-trained model must beat the majority class by this much for the diagnostic check to mean anything.
INFORMATIVE_MARGIN = 0.05


def release_diagnostic_check(efficacy: EfficacyResult | None, method: str, params: dict[str, Any],
                             max_accuracy_drop: float | None, facts: ReleaseFacts | None = None) -> dict[str, Any]:
    """The release-level diagnostic check from a release-efficacy result (the JSON ``medue evaluate`` writes).

    Uses the worst accuracy drop over the attackers' clean-trained models that fitted their training set and beat the
    majority class. ``result`` is ``"pass"``, ``"fail"``, ``"inconclusive"`` (no clean model learned the task), or
    ``"not tested"`` (no threshold, no results attached, or results for another method, other parameters or,
    given ``facts``, other data than this release's: another modality, image size or classes),
    with a ``note`` saying why; ``evidence`` names the dataset, method and parameters the number comes from.
    """
    entry: dict[str, Any] = {"check": DIAGNOSTIC_CHECK, "result": "not tested", "max_accuracy_drop": max_accuracy_drop}
    if max_accuracy_drop is None:
        return {**entry, "note": "fidelity.max_diagnostic_accuracy_drop is null"}
    if not efficacy:
        return {**entry, "note": "no efficacy results attached (report.efficacy_results)"}
    entry["evidence"] = describe(efficacy)
    applies, why = evidence_applies(efficacy, method, params, facts)
    if not applies:
        return {**entry, "note": why}
    per_arch = efficacy.diagnostic
    if not per_arch:
        return {**entry, "note": "the attached results have no diagnostic check"}
    # a clean-trained model that did not fit its training set, or scores at chance, learned nothing a change to the
    # images could remove: its accuracy drop says nothing about diagnostic content
    chance = float(efficacy.dataset.get("majority_class_accuracy") or 0.0)
    fitted = {r.architecture for r in efficacy.rows if r.training_data == "clean" and r.fit}
    informative = {a: v for a, v in per_arch.items()
                   if a in fitted and v["accuracy_original"] > chance + INFORMATIVE_MARGIN}
    if not informative:
        trained = [r for r in efficacy.rows if r.training_data == "clean"]
        best = max((r.train_accuracy for r in trained), default=None)
        return {**entry, "result": "inconclusive",
                "note": "the clean-trained models did not learn the task" + (
                    f" (best training accuracy {best:.2f}; clean accuracy at most "
                    f"{max(v['accuracy_original'] for v in per_arch.values()):.2f}, chance {chance:.2f})"
                    if best is not None else "") + ": a model that learned nothing cannot show that the content "
                "survived. Evaluate on more items (a larger release or --holdout part) or for more epochs "
                "(--epochs), so the clean model fits"}
    worst_arch, worst = max(informative.items(), key=lambda kv: kv[1]["accuracy_drop"])
    entry.update(result="pass" if worst["accuracy_drop"] <= max_accuracy_drop + 1e-12 else "fail",
                 accuracy_drop=worst["accuracy_drop"], architecture=worst_arch,
                 accuracy_original=worst["accuracy_original"], accuracy_protected=worst["accuracy_protected"],
                 agreement=worst["agreement"], images=worst["images"])
    return entry
