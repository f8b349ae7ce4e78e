"""The protection report: a JSON document validated against a versioned schema, and a self-contained HTML page
(before | after | amplified |delta| | mask pictures, fidelity plots, efficacy chart, conformance, limitations).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medue.evidence import MIX_MARGIN, TARGET, summarise, verdict
from medue.habits import EVERYDAY
from medue.io.atomic import write_text_atomic
from medue.layout import DONE, FAILED, GATE_FAILED, QUARANTINED, OutputLayout
from medue.records import EfficacyResult, ItemMarker, ReleaseOutcome

REPORT_SCHEMA = "medue.report/1"

LIMITATIONS = [
    "Unlearnable-example protection is empirical: it lowers what a model learns from the released images under "
    "the training recipes and countermeasures evaluated, not under every possible attack.",
    "Protection strength depends on the L-inf budget; a budget small enough to be clinically invisible may be "
    "weakened by strong preprocessing (see the countermeasure table of the efficacy audit).",
    "Fidelity metrics (PSNR, SSIM, max |delta|) measure numerical change, not diagnostic equivalence; a reader "
    "study is out of scope of this report.",
    "The protector is fitted to this release; a different surrogate or much more data may change its effect.",
]


def load_schema() -> dict[str, Any]:
    return json.loads(resources.files("medue.audit").joinpath("report.schema.json").read_text())


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``report`` does not follow the shipped schema."""
    import jsonschema

    jsonschema.validate(report, load_schema())


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


#: Side in pixels of each picture of a preview panel (whole-factor block reduction or nearest enlargement to it).
PANEL_SIDE = 256


def _to_side(img: np.ndarray, reduce: str) -> tuple[np.ndarray, float]:
    """``img`` brought near :data:`PANEL_SIDE` px a side by a whole factor: blocks reduced by ``reduce`` ("mean" or
    "max") when larger, pixels repeated when smaller. Returns the picture and its scale (output px per input px)."""
    big = max(img.shape)
    if big > PANEL_SIDE:
        f = -(-big // PANEL_SIDE)
        h, w = -(-img.shape[0] // f) * f, -(-img.shape[1] // f) * f
        blocks = np.pad(img, ((0, h - img.shape[0]), (0, w - img.shape[1])), mode="edge").reshape(h // f, f, w // f, f)
        return (blocks.mean(axis=(1, 3)) if reduce == "mean" else blocks.max(axis=(1, 3))), 1.0 / f
    k = max(1, PANEL_SIDE // big)
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1), float(k)


def _inferno(values: np.ndarray) -> np.ndarray:
    """``values`` in [0, 1] as RGB uint8 through matplotlib's perceptually uniform 'inferno' colour map."""
    from matplotlib import colormaps

    lut = (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    return lut[np.clip(np.round(values * 255), 0, 255).astype(np.intp)]


def _most_changed_window(diff: np.ndarray, size: int) -> tuple[int, int, int]:
    """``(row, column, size)`` of the ``size`` x ``size`` window with the largest sum of ``diff``."""
    n = min(size, *diff.shape)
    c = np.pad(diff.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]
    y0, x0 = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(y0), int(x0), n


def _preview_order(m: ItemMarker) -> tuple[int, str]:
    """Previews show protected items first, then weakened ones, then the rest (unchanged on purpose, not exported)."""
    if m.exported and m.unchanged_on_purpose is None:
        return (1 if m.weakened else 0, m.item_id)
    return (2, m.item_id)


def window_saturates(image: np.ndarray, lo: float, hi: float, fraction: float = 0.9) -> bool:
    """Whether the window ``[lo, hi]`` clips at least ``fraction`` of the image's non-constant part to black or
    white (the picture would show nothing of the content)."""
    values = np.asarray(image, dtype=np.float64)
    if values.size == 0 or values.max() == values.min():
        return False
    return float(((values <= lo) | (values >= hi)).mean()) >= fraction


def _panel(original: np.ndarray, protected: np.ndarray, title: str, window: Any = None) -> str:
    """One PNG data URI: before | after | amplified |delta| | mask, and for images larger than 96 px the 64 x 64
    window where the most changed, not shrunk (1-px lines vanish when a 512 px slice is reduced).

    Drawn with Pillow: about 0.1 s for a 512 px slice against about 1 s for the same figure through matplotlib,
    which made the report most of a release's tail. Pictures larger than :data:`PANEL_SIDE` are reduced by whole
    blocks (the images by their mean, |delta| and the mask by their maximum, so a changed pixel never disappears).
    """
    from PIL import Image, ImageDraw, ImageFont

    diff = np.abs(protected.astype(np.int64) - original.astype(np.int64))
    # the clinical window (stored units) where the item has one (CT, or a DICOM WindowCenter/Width), else percentiles
    lo, hi = (float(window[0]), float(window[1])) if window is not None else np.percentile(original, [0.5, 99.5])
    if window is not None and window_saturates(original, lo, hi):
        # the clinical window shows this slice as one flat colour (a phantom, or values outside soft tissue):
        # the picture then says nothing, so it is drawn by percentiles and the title says so
        lo, hi = np.percentile(original, [0.5, 99.5])
        title += " (clinical window saturated: shown by percentiles)"
    peak = max(int(diff.max()), 1)

    def gray(img: np.ndarray) -> np.ndarray:
        g = np.clip((img.astype(np.float64) - lo) / max(hi - lo, 1e-9), 0, 1)
        return np.repeat(np.round(g * 255).astype(np.uint8)[..., None], 3, axis=2)

    before, scale = _to_side(original.astype(np.float64), "mean")
    after, _ = _to_side(protected.astype(np.float64), "mean")
    delta, _ = _to_side(diff, "max")
    mask, _ = _to_side((diff > 0).astype(np.uint8), "max")
    shrunk = "" if scale >= 1 else f", block max of {round(1 / scale)}x{round(1 / scale)} px"
    pictures = [(gray(before), "before"), (gray(after), "after"),
                (_inferno(delta / peak), f"|delta| (amplified, max {int(diff.max())}{shrunk})"),
                (np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2),
                 f"mask ({100 * float((diff > 0).mean()):.1f}% changed)")]
    zoom = _most_changed_window(diff, 64) if min(diff.shape) > 96 else None
    if zoom:
        y0, x0, n = zoom
        window, _ = _to_side(diff[y0:y0 + n, x0:x0 + n], "max")
        pictures.append((_inferno(window / peak), f"|delta|, {n}x{n} px at ({x0}, {y0}), not shrunk"))
    font, small = ImageFont.load_default(size=13), ImageFont.load_default(size=11)
    gap, top, head = 12, 26, 20
    side_h = max(p.shape[0] for p, _ in pictures)
    widths = [max(p.shape[1], 1) for p, _ in pictures]
    canvas = Image.new("RGB", (sum(widths) + gap * (len(pictures) + 1), top + head + side_h + gap), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 4), title, fill="black", font=font)
    x = gap
    for (picture, caption), w in zip(pictures, widths):
        canvas.paste(Image.fromarray(picture), (x, top + head))
        draw.text((x, top + 2), caption, fill="black", font=small)
        x += w + gap
    if zoom:
        y0, x0, n = zoom
        r = [gap * 3 + widths[0] + widths[1] + x0 * scale, top + head + y0 * scale]
        draw.rectangle([r[0], r[1], r[0] + n * scale - 1, r[1] + n * scale - 1], outline=(0, 255, 255))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


#: Up to this many volumes the fidelity chart has one labelled bar each; above, histograms.
MAX_BARS = 40


def _fidelity_plot(items: Sequence[ItemMarker]) -> str | None:
    fids = [(i.item_id[:8], i.fidelity) for i in items if i.fidelity is not None]
    if not fids:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    names = [n for n, _ in fids]
    psnr = [f["psnr_db"] if f["psnr_db"] is not None else 0 for _, f in fids]
    ssim = [f["ssim"] for _, f in fids]
    if len(fids) <= MAX_BARS:
        axes[0].bar(names, psnr, color="#4477aa")
        axes[0].set_title("PSNR (dB) per volume")
        axes[1].bar(names, ssim, color="#228833")
        axes[1].set_title("SSIM per volume")
        axes[1].set_ylim(min(0.9, min(ssim)), 1.0)
        for a in axes[:2]:
            a.tick_params(axis="x", rotation=60, labelsize=7)
    else:  # one bar per volume would be hundreds of unreadable labels: the distribution instead
        axes[0].hist(psnr, bins=30, color="#4477aa")
        axes[0].set_title(f"PSNR (dB), {len(fids)} volumes")
        axes[0].set_ylabel("volumes")
        axes[1].hist(ssim, bins=30, color="#228833")
        axes[1].set_title(f"SSIM, {len(fids)} volumes")
    slices = [v for _, f in fids for v in f.get("per_slice_psnr_db", []) if v is not None and np.isfinite(v)]
    axes[2].hist(slices, bins=20, color="#aa3377")
    unchanged = sum(1 for _, f in fids for v in f.get("per_slice_psnr_db", []) if v is None or not np.isfinite(v))
    axes[2].set_title("per-slice PSNR histogram (dB)" + (f"; {unchanged} unchanged slice(s)" if unchanged else ""))
    return _png(fig)


def _efficacy_plot(efficacy: EfficacyResult, summary: Sequence[dict[str, Any]]) -> str | None:
    """Clean baseline and release per attack (``summary``: :func:`medue.evidence.summarise` of ``efficacy``); the
    release bar is the mean over seeds, its whisker spans the best to the worst seed (the worst decides the
    verdict), and the target line is drawn."""
    if not summary:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["attack"].replace("_", "\n", 1) for s in summary]
    fig, ax = plt.subplots(figsize=(max(8, 0.75 * len(summary) + 2), 4.2))
    x = np.arange(len(summary))
    ax.bar(x - 0.2, [s["clean"] or 0 for s in summary], 0.4, label="trained on clean data", color="#88aacc")
    mean = np.array([s["protected_mean"] if s["protected_mean"] is not None else np.nan for s in summary])
    lo = np.array([s["protected_min"] if s["protected_min"] is not None else np.nan for s in summary])
    hi = np.array([s["protected_max"] if s["protected_max"] is not None else np.nan for s in summary])
    ax.bar(x + 0.2, np.nan_to_num(mean), 0.4, label="trained on the release (mean of seeds)", color="#cc6677")
    ax.errorbar(x + 0.2, mean, yerr=[np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)], fmt="none",
                ecolor="black", capsize=3, label="best to worst seed")
    ax.axhline(TARGET, color="#228833", linestyle=":", linewidth=1.5, label=f"target {TARGET:.2f} (worst seed)")
    chance = efficacy.dataset.get("majority_class_accuracy")
    if chance is not None:
        ax.axhline(chance, color="black", linestyle="--", linewidth=1, label="majority class")
    ax.set_xticks(x, names, fontsize=7, rotation=60, ha="right")
    ax.set_ylabel("clean-test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Unauthorised training on released files (true labels): " + efficacy.name, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _png(fig)


def _tradeoff(method: str, preset: str | None) -> tuple[str | None, list[list[str]]]:
    """The chart and table of ``method``'s presets (:func:`medue.presets.frontier`): per fidelity budget, the worst
    seed of every attack measured at all of them; ``preset`` (the release's own, if any) is marked."""
    from medue.presets import frontier

    points = frontier(method)
    if len(points) < 2:
        return None, []
    common = [k for k in points[0]["attacks"] if all(k in p["attacks"] for p in points)]
    rows = []
    for p in points:
        f = p["fidelity"]
        psnr, ssim = f.get("psnr_db") or {}, f.get("ssim") or {}
        cells = [f"{p['attacks'][k]['worst']:.3f}" if p["attacks"][k]["worst"] is not None else "not run"
                 for k in common]
        rows.append([p["preset"] + (" (this release)" if p["preset"] == preset else ""),
                     f"{psnr.get('min', '?')} / {ssim.get('min', '?')}", str(f.get("max_abs_units", "?")), *cells])
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    x = [float(p["budget"].get("min_psnr_db") or 0) for p in points]
    for k in common:
        ax.plot(x, [p["attacks"][k]["worst"] for p in points], marker="o", label=k)
    ax.axhline(TARGET, color="black", linestyle=":", label=f"stopped ({TARGET:.2f})")
    if preset in [p["preset"] for p in points]:
        ax.axvline(x[[p["preset"] for p in points].index(preset)], color="grey", alpha=0.4, linewidth=8,
                   label="this release")
    ax.invert_xaxis()
    ax.set_xlabel("fidelity budget: PSNR of every image, dB (left: closer to the original)")
    ax.set_ylabel("attacker's clean-test accuracy\n(worst seed)")
    ax.set_ylim(0.4, 1.02)
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    header = ["preset", "PSNR min dB / SSIM min", "max |delta| units", *common]
    return _png(fig), [header, *rows]


def _power_rows(method: str, preset: str | None) -> tuple[str, list[list[str]]]:
    """What ``medue verify`` proves for this method, measured (:func:`medue.presets.verify_power`): a sentence and
    one row per attack (models trained on the release, detected), then the false positives."""
    from medue.presets import verify_power

    power = verify_power(method, preset)
    if power is None:
        return ("Not measured for this setting. `medue verify` works for the class patterns of lines and fields "
                "(`medue verify OUTPUT --model MODEL`); its power was measured for the presets lines-38db, "
                "fields-32db and fields-32db-keyed only.", [])
    rows: dict[str, list[int]] = {}
    negatives: dict[str, list[int]] = {}
    for r in power["rows"]:
        if r["saw_release"]:
            cell = rows.setdefault(r["attack"], [0, 0])
        else:
            kind = "trained on clean data" if r["trained_on"] in ("clean", "clean_part") else r["trained_on"]
            cell = negatives.setdefault(kind, [0, 0])
        cell[0] += int(r["detected"])
        cell[1] += 1
    pos = [sum(c[0] for c in rows.values()), sum(c[1] for c in rows.values())]
    neg = [sum(c[0] for c in negatives.values()), sum(c[1] for c in negatives.values())]
    sentence = (f"Measured on {power['preset']} (Br35H 64 px, alpha {power['alpha']}): `medue verify` detected "
                f"{pos[0]} of {pos[1]} models trained on the release and {neg[0]} of {neg[1]} models that never saw "
                "it (false positives).")
    if power.get("claim") == "setting":
        sentence += (" This setting's patterns are the same in every release made with it: a detection proves the "
                     "model was trained on data protected with this setting, not that it was this site's release; "
                     "fields-32db-keyed draws its fields from the key and proves this site's release.")
    return sentence, [[a, f"{c[0]} of {c[1]}"] for a, c in sorted(rows.items())] + [
        [f"never saw the release: {kind} (false positives)", f"{c[0]} of {c[1]}"]
        for kind, c in sorted(negatives.items())]


def efficacy_verdict(efficacy: EfficacyResult, *, method: str, params: dict[str, Any], facts: Any = None,
                     target: float | None = None) -> dict[str, Any]:
    """What the release is protected against, what not, and what was not tested (:func:`medue.evidence.verdict`)."""
    return verdict(efficacy, method=method, params=params, facts=facts, target=TARGET if target is None else target)


def verdict_headline(v: dict[str, Any] | None, efficacy: EfficacyResult | None) -> str:
    """The one line a board reads first: whether the protection was measured for this release, what it stops of
    the everyday training habits, the worst of them, and what that means."""
    if not v or efficacy is None:
        return ("NOT MEASURED: no efficacy result is attached, so nothing says what this release stops. Run `medue "
                "evaluate CONFIG --self` on a labelled release, or attach a result (report.efficacy_results).")
    if not v["applies"]:
        return (f"NOT MEASURED ON THIS RELEASE: the attached result is {v.get('note', 'of another setting')}; it "
                "says nothing about what this release stops.")
    from medue.presets import worst_seed

    rows = []
    for s in summarise(efficacy):
        w = worst_seed(s)
        if s["habit"] in EVERYDAY and w is not None and s["protected_max"] is not None:
            held = (w - s["clean_part"] <= MIX_MARGIN) if s.get("clean_part") is not None else w <= v["target"]
            rows.append((w, s, held))
    where = ("this release's own held-out items" if v.get("own")
             else f"release files of this setting ({efficacy.dataset.get('name', '?')})")
    if not rows:
        return (f"NOT MEASURED: no everyday-habit attacker of the evidence ({where}) fitted its training set, so its "
                "numbers show nothing. Train longer (medue evaluate --epochs) or evaluate a release with more items.")
    held = sum(1 for _, _, h in rows if h)
    w, s, _ = max((r for r in rows if not r[2]), default=max(rows, key=lambda r: r[0]), key=lambda r: r[0])
    clean = "not run" if s["clean"] is None else f"{s['clean']:.2f}"
    head = f"MEASURED on {where}: stops {held} of {len(rows)} everyday ways of training measured; "
    if held == len(rows):
        return head + (f"the worst, {s['attack']}, reached {w:.2f} clean-test accuracy ({clean} on clean data): "
                       "a model trained on this release in those ways is held near chance.")
    return head + (f"the worst, {s['attack']}, reached {w:.2f} clean-test accuracy ({clean} on clean data): a model "
                   "trained on this release that way learns nearly as well as from the originals.")


def carried_suffix(p: dict[str, Any]) -> str:
    """What the verdict line adds when the release's items do not carry what was measured: items weakened by the
    gate, or no item protected at all."""
    meant = p.get("protected", 0) + p.get("weakened_by_gate", 0)
    if not meant:
        return " NO ITEM of this release carries the protection." if p.get("unchanged_on_purpose") or any(
            p.get(k) for k in ("quarantined", "gate_failed", "failed")) else ""
    if not p.get("weakened_by_gate"):
        return ""
    return (f" Only {p['protected']} of {meant} patterned items carry the protection in full ({p['weakened_by_gate']} "
            "weakened by the fidelity gate): those carry less than what was measured.")


def verdict_lines(v: dict[str, Any]) -> list[str]:
    """The verdict in plain lines, the same words in ``medue report`` and the HTML report."""
    whose = "this release's own held-out items" if v.get("own") else v["evidence"]
    lines = [f"efficacy evidence: {whose}" + ("" if v["applies"] else f" [{v.get('note', '')}]"),
             f"stopped means: the worst seed's clean-test accuracy at or below {v['target']:.2f} (chance 0.50 on "
             "two balanced classes)"]
    lines.append("protects against: " + ("; ".join(v["protects_against"]) or
                                         ("not measured here" if not v["applies"]
                                          else "no attack measured here is stopped")))
    lines.append("does not protect against: " + ("; ".join(v["does_not_protect_against"]) or
                                                 ("not measured here" if not v["applies"]
                                                  else "no attack measured here gets through")))
    lines.append("not tested: " + ("; ".join(v.get("not_tested") or []) or "none"))
    return lines


def _conformance(markers: Sequence[ItemMarker]) -> list[dict[str, Any]]:
    done = [m for m in markers if m.exported]
    budget_ok = all(m.within_budget for m in done)
    return [
        {"check": "every exported file re-read and verified (pixels, UIDs, derived-image tags, header fields)",
         "result": "pass" if done else "n/a", "items": len(done)},
        {"check": "perturbation within the L-inf budget in whole stored units", "result": "pass" if budget_ok else "fail"},
        {"check": "fidelity gate passed or override recorded",
         "result": "pass" if all(m.gate_passed for m in done) else "fail"},
        {"check": "inputs that could not be protected were quarantined with a reason",
         "result": "pass", "items": sum(1 for m in markers if m.status == QUARANTINED)},
    ]


def protection_counts(markers: Sequence[ItemMarker], class_of: dict[str, str] | None = None) -> dict[str, Any]:
    """How much of the release carries the protection: exported items protected in full, weakened by the fidelity
    gate (with how much of the noise they kept), unchanged on purpose (a blank class), and the items not exported;
    overall and per class (``class_of``: item id -> class name; aggregate counts only, no item's class)."""
    def count(ms: Sequence[ItemMarker]) -> dict[str, Any]:
        done = [m for m in ms if m.exported]
        weakened = [m.adapted for m in done if m.adapted is not None]
        out: dict[str, Any] = {
            "protected": sum(1 for m in done if m.protected_in_full),
            "weakened_by_gate": len(weakened),
            "unchanged_on_purpose": sum(1 for m in done if m.unchanged_on_purpose is not None),
            "quarantined": sum(1 for m in ms if m.status == QUARANTINED),
            "gate_failed": sum(1 for m in ms if m.status == GATE_FAILED),
            "failed": sum(1 for m in ms if m.status == FAILED)}
        if weakened:
            limits: dict[str, int] = {}
            for a in weakened:
                for name in a.get("limits") or ["(not recorded)"]:
                    limits[name] = limits.get(name, 0) + 1
            out["weakened_by_limit"] = dict(sorted(limits.items()))
            out["weakened_mean_kept_fraction"] = round(float(np.mean([a.get("kept_fraction", 1.0)
                                                                      for a in weakened])), 4)
            out["weakened_mean_amplitude_scale"] = round(float(np.mean([a.get("amplitude_scale", 1.0)
                                                                        for a in weakened])), 4)
        return out

    result = count(markers)
    if class_of:
        result["by_class"] = {c: count([m for m in markers if class_of.get(m.item_id) == c])
                              for c in sorted(set(class_of.values()))}
    return result


def protection_lines(p: dict[str, Any]) -> list[str]:
    """The protection counts in plain lines (the HTML report and ``medue report`` say the same)."""
    def words(c: dict[str, Any]) -> str:
        text = f"{c['protected']} protected"
        if c["weakened_by_gate"]:
            text += (f", {c['weakened_by_gate']} weakened by the fidelity gate (kept on average "
                     f"{100 * c.get('weakened_mean_kept_fraction', 1):.0f} % of the changed pixels at "
                     f"{100 * c.get('weakened_mean_amplitude_scale', 1):.0f} % amplitude"
                     + ("; the limits the full protection missed: " + ", ".join(
                         f"{k} ({n})" for k, n in c["weakened_by_limit"].items()) if c.get("weakened_by_limit")
                        else "") + ")")
        if c["unchanged_on_purpose"]:
            text += (f", {c['unchanged_on_purpose']} released UNCHANGED on purpose (their class carries no pattern: "
                     "the method's blank class)")
        not_out = c["quarantined"] + c["gate_failed"] + c["failed"]
        if not_out:
            text += f", {not_out} not exported ({c['quarantined']} quarantined, {c['gate_failed']} failed the gate, " \
                    f"{c['failed']} failed)"
        return text

    lines = ["exported items: " + words(p)]
    lines += [f"  {name if name.startswith('class ') else 'class ' + name}: " + words(c)
              for name, c in p.get("by_class", {}).items()]
    return lines


def build_report(layout: OutputLayout, outcome: ReleaseOutcome) -> tuple[Path, Path]:
    """Write ``release/report.json`` (schema-validated) and ``release/report.html`` of ``outcome`` (its manifest
    written first); return their paths."""
    config, markers, fit_info, key_fingerprint = (outcome.record, outcome.markers, outcome.fit,
                                                  outcome.key_fingerprint)
    env, efficacy, release_checks = outcome.env, outcome.efficacy, outcome.checks
    ignored, facts, class_of = outcome.ignored, outcome.facts, outcome.class_of
    items = []
    for m in sorted(markers, key=lambda m: m.item_id):
        entry = m.subset("item_id", "status", "format", "modality", "shape", "reason", "message", "fidelity",
                         "override", "outputs", "warnings", "unchanged_on_purpose")
        if "fidelity" in entry:
            entry["fidelity"] = {k: v for k, v in entry["fidelity"].items() if k != "per_slice_psnr_db"}
        items.append(entry)
    counts = {s: sum(1 for m in markers if m.status == s) for s in (DONE, QUARANTINED, GATE_FAILED, FAILED)}
    holdout = layout.private / "holdout.local.json"
    held_out = len(json.loads(holdout.read_text())["items"]) if holdout.is_file() else 0
    report = {
        "schema": REPORT_SCHEMA,
        "release": config.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "medue_version": str(env.get("medue", "")),
        "method": config.method,
        "preset": config.public_params.get("protect.preset"),
        "key_fingerprint": key_fingerprint,
        "config_hash": config.config_hash,
        "protector": {"params": fit_info.params, "state_fingerprint": fit_info.state_fingerprint,
                      "fit_slices": fit_info.slices, "fit_pixels_used": fit_info.pixels_used,
                      "fit_seconds": fit_info.fit_seconds,
                      "surrogate_accuracy_per_round": fit_info.surrogate_accuracy_per_round},
        "policy": config.fidelity_policy,
        "policies": {"deidentification": config.deidentification,
                     "deidentification_profile": config.deidentification_profile, "uid_mode": config.uid_mode,
                     "labels_in_release": config.labels_in_release, "reversible": config.reversible,
                     "fidelity_override": ({"reason": config.override_reason, "by": config.override_by}
                                           if config.override_reason else None)},
        "warnings": [{"item_id": m.item_id, "warning": str(w)}
                     for m in sorted(markers, key=lambda m: m.item_id) for w in m.warnings or []],
        "protection": protection_counts(markers, class_of),
        "summary": {"items": len(markers), **counts, "ignored": len(ignored), "held_out": held_out,
                    "ignored_reasons": {r: sum(1 for i in ignored if i["reason"] == r)
                                        for r in sorted({i["reason"] for i in ignored})}},
        "items": items,
        "conformance": _conformance(markers) + list(release_checks),
        "efficacy": efficacy.to_dict() if efficacy else None,
        "efficacy_verdict": (efficacy_verdict(efficacy, method=config.method,
                                              params=fit_info.params, facts=facts) if efficacy else None),
        "verdict_line": "",
        "limitations": LIMITATIONS,
        "environment": env,
    }
    report["verdict_line"] = verdict_headline(report["efficacy_verdict"], efficacy) + carried_suffix(
        report["protection"])
    validate_report(report)
    json_path = layout.release / "report.json"
    write_text_atomic(json_path, json.dumps(report, indent=2, default=str))
    html_path = layout.release / "report.html"
    write_text_atomic(html_path, render_html(report, markers, layout, config.max_items_pictured, efficacy))
    return json_path, html_path


def _details(check: dict[str, Any]) -> str:
    """Everything a conformance entry carries besides its name, result and item count, as ``key: value``."""
    return "; ".join(f"{k}: {v}" for k, v in check.items() if k not in ("check", "result", "items"))


#: Rows of the per-item table shown open; a longer table starts folded (a release of 2400 images is 57,000 px tall).
ITEMS_SHOWN_OPEN = 50

#: Click a column head of a ``sortable`` table to sort by it (numbers as numbers), again to reverse.
SORT_SCRIPT = """<script>
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.style.cursor = 'pointer';
  th.title = 'sort by this column';
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var up = th.dataset.order !== 'up';
    th.closest('tr').querySelectorAll('th').forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = up ? 'up' : 'down';
    var key = function (tr) {
      var t = tr.cells[col].textContent.trim(), n = parseFloat(t);
      return isNaN(n) ? t : n;
    };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      var c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1);
      return up ? c : -c;
    }).forEach(function (tr) { body.appendChild(tr); });
  });
});
</script>"""


def _item_rows(items: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """Per-item fidelity rows of the report's sortable table (folded beyond :data:`ITEMS_SHOWN_OPEN` rows)."""
    return [[i["item_id"], i["status"], i.get("modality", ""), "x".join(map(str, i.get("shape", []))),
             _fmt(i["fidelity"]["psnr_db"], 2), _fmt(i["fidelity"]["ssim"], 4), i["fidelity"]["max_abs_units"],
             _fmt(i["fidelity"]["max_abs_physical"], 2), _fmt(i["fidelity"]["fraction_changed"], 4),
             f"{100 * i['fidelity'].get('max_relative_change', 0.0):.1f} %", _fmt(i["fidelity"]["data_range"], 0),
             ("pass" if i["fidelity"]["passed"] else ("override" if i.get("override") else "FAIL"))
             + (" (unchanged on purpose: blank class)" if i.get("unchanged_on_purpose") else "")]
            for i in items if "fidelity" in i]


def _acc(v: float | None) -> str:
    """An accuracy cell: a number measured, or "not run" (never a value nobody measured)."""
    return "not run" if v is None else f"{v:.3f}"


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "identical"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


DEID_WORDS = {"refuse": "refuse: an input that is not marked de-identified is quarantined, not released",
              "warn": "warn: an input that is not marked de-identified is released with a warning (below)",
              "ignore": "ignore: de-identification is not checked; the site vouches for it"}


def fidelity_rules(policy: dict[str, Any]) -> list[list[str]]:
    """The fidelity gate in words, one row per threshold (``None``: not checked), instead of its raw JSON."""
    span = {"dtype": "the stored type's span (255 for 8-bit images)",
            "volume": "each original volume's max - min"}.get(policy.get("data_range", "volume"), "")

    def limit(key: str, text: str) -> list[str]:
        value = policy.get(key)
        return [text, "not checked" if value is None else f"{value:g}" if isinstance(value, (int, float))
                else str(value)]

    rows = [limit("min_psnr_db", "lowest PSNR, dB"), limit("min_ssim", "lowest SSIM"),
            limit("max_abs_units", "largest change, stored units"),
            limit("max_abs_physical", "largest change, physical units (HU for CT)"),
            limit("max_fraction_changed", "largest fraction of voxels changed"),
            limit("max_diagnostic_accuracy_drop", "largest drop of a clean-trained model's accuracy"),
            ["PSNR/SSIM data range", span]]
    if policy.get("min_protected_fraction") is not None:
        rows.append(limit("min_protected_fraction", "smallest fraction of patterned items protected in full"))
    if policy.get("override_reason"):
        rows.append(["override", f"by {policy.get('override_by')}: {policy.get('override_reason')}"])
    return rows


def _policy_rows(report: dict[str, Any]) -> list[list[str]]:
    """The release's handling rules in words (the report then lists every item warning, or that there were none)."""
    pol = report.get("policies") or {}
    override = pol.get("fidelity_override")
    rows = [["de-identification", DEID_WORDS.get(pol.get("deidentification", ""), pol.get("deidentification", ""))]]
    if pol.get("deidentification_profile"):
        rows.append(["DICOM attributes", pol["deidentification_profile"]])
    return rows + [
            ["DICOM UIDs", "keyed: new UIDs derived from the key (the same input gives the same UIDs)"
             if pol.get("uid_mode") == "keyed" else "random: new UIDs on every run"],
            ["labels in the release", "yes (labels.include_in_release)" if pol.get("labels_in_release") else
             "no: labels were used to fit the noise and are not published"],
            ["reversible", "yes: the deltas are kept under private/ for an authorised restore"
             if pol.get("reversible") else "no: nothing kept that could restore the originals"],
            ["fidelity gate override", f"recorded by {override.get('by')}: {override.get('reason')}" if override
             else "none: an image that fails the gate is not exported"]]


def _looks_like(method: str) -> str:
    """What the method's pattern looks like on an image, in words (:attr:`~medue.protect.base.Protector.looks_like`:
    a class attribute, no protector is built)."""
    from medue.protect import PROTECTORS

    from medue.errors import UnknownComponentError

    try:
        return PROTECTORS.get(method).looks_like
    except UnknownComponentError:
        return ""


def render_html(report: dict[str, Any], markers: Sequence[ItemMarker], layout: OutputLayout,
                max_pictures: int, efficacy: EfficacyResult | None = None) -> str:
    """A single HTML file with every picture inlined as a data URI (opens offline, can be e-mailed); ``efficacy``
    is the result ``report["efficacy"]`` was written from. The page is ``templates/report.html.j2``; this gathers
    what it shows."""
    s = report["summary"]
    previews = []
    for m in sorted(markers, key=_preview_order):
        preview = layout.private / "previews" / f"{m.item_id}.npz"
        if len(previews) >= max_pictures or not preview.exists():
            continue
        with np.load(preview) as p:
            window = p["window"] if "window" in p.files else None
            title = f"{m.item_id} ({m.modality or ''}, {m.status}" + (
                ", clinical window)" if window is not None else ")")
            previews.append((f"preview {m.item_id}", _panel(p["original"], p["protected"], title, window)))
    verdict = report.get("efficacy_verdict")
    measured = efficacy is not None and bool(verdict)
    summary = summarise(efficacy) if measured else []
    items = _item_rows(report["items"])
    tradeoff_chart, tradeoff_rows = _tradeoff(report["method"], report.get("preset"))
    power_sentence, power_rows = _power_rows(report["method"], report.get("preset"))
    return _template().render(
        r=report,
        summary_row=[s["items"], s["done"], s["quarantined"], s["gate_failed"], s["failed"], s.get("held_out", 0),
                     f"{s.get('ignored', 0)} " + ", ".join(f"({n} {r})" for r, n in s.get("ignored_reasons", {}).items())],
        carries=[line.strip() for line in protection_lines(report["protection"])] if report.get("protection") else [],
        policies=_policy_rows(report), warnings=[[w["item_id"], w["warning"]] for w in report.get("warnings") or []],
        item_rows=items, folded=len(items) > ITEMS_SHOWN_OPEN, fidelity_rules=fidelity_rules(report.get("policy", {})),
        fidelity_plot=_fidelity_plot(sorted(markers, key=lambda m: m.item_id)),  # markers keep per-slice PSNRs
        previews=previews,
        bad_rows=[[i["item_id"], i["status"], i.get("reason", ""), i.get("message", "")[:300]]
                  for i in report["items"] if i["status"] != DONE],
        verdict_first_line=verdict_lines(verdict)[0] if measured else "",
        efficacy_chart=_efficacy_plot(efficacy, summary) if measured else None,
        efficacy_rows=[[x["attack"], x["habit"], _acc(x["clean"]), _acc(x["protected_max"]), _acc(x["protected_min"]),
                        _acc(x["protected_mean"]), _acc(x["train_min"]), x["protected_runs"], x["unfit_runs"]]
                       for x in summary] if measured else None,
        attacks=efficacy.attacks if measured else {},
        tradeoff_chart=tradeoff_chart, tradeoff_rows=tradeoff_rows, power_sentence=power_sentence,
        looks_like=_looks_like(report["method"]),
        power_rows=power_rows,
        conformance_rows=[[c["check"], c["result"], c.get("items", ""), _details(c)] for c in report["conformance"]],
        environment_rows=[[k, v] for k, v in report["environment"].items()],
        sort_script=SORT_SCRIPT)


def _template() -> Any:
    """The report's Jinja2 template; ``|h`` escapes as :func:`html.escape` does (quotes included)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("medue.audit", "templates"), autoescape=False,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["h"] = lambda value: html.escape(str(value))
    return env.get_template("report.html.j2")
