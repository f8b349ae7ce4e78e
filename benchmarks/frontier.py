"""The fidelity/efficacy frontier of one carrier: one row per release setting, its fidelity measured on the release
files and, per attack, the worst seed against the clean baseline (issue #34, item 3).

Each argument is a ``medue evaluate`` result (``.json``); results of the same setting (method, parameters, budget)
are pooled. With ``--releases DIR`` the release folders (``DIR/*_release`` as ``medue evaluate --work`` wrote them, matched by
the fit's state fingerprint) are read again for the largest change relative to tissue intensity of each
image (a bias field's measure), with today's definition for every row. Writes OUT.md and OUT.png; nothing is typed in.

    python benchmarks/frontier.py benchmarks/results/release_efficacy_br35h_64_nifti_fields_*db.json \
        --out benchmarks/results/frontier_fields_br35h_64
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from medue.evidence import MIX_MARGIN, TARGET, _param_differences, summarise
from medue.presets import worst_seed
from medue.records import EfficacyResult, FitRecord, ItemMarker


def relative_change(release_dir: Path) -> dict[str, float] | None:
    """Max and mean over the exported images of the largest change relative to tissue intensity, from the files."""
    import nibabel as nib

    from medue.fidelity.metrics import volume_metrics

    inputs = release_dir / "private" / "inputs.local.json"
    if not inputs.is_file():
        return None
    index = json.loads(inputs.read_text())
    values = []
    for marker in sorted((release_dir / "markers").glob("*.json")):
        m = ItemMarker.read(marker)
        if m is None or m.status != "done" or not m.outputs:
            continue
        protected = np.asarray(nib.load(release_dir / "release" / m.outputs[0]["path"]).dataobj)
        original = np.asarray(nib.load(index[m.item_id]["paths"][0]).dataobj)
        o, p = (np.moveaxis(a.reshape(a.shape[0], a.shape[1], -1), -1, 0) for a in (original, protected))
        values.append(volume_metrics(o, p, data_range=255).max_relative_change)
    return {"max": round(float(np.max(values)), 4), "mean": round(float(np.mean(values)), 4)} if values else None


def _release_folder(root: Path, fingerprint: str | None) -> Path | None:
    """The release folder under ``root`` whose fit has ``fingerprint`` (the one with the most items)."""
    found = []
    for record in root.glob("*_release/private/protector.json"):
        fit = FitRecord.read(record)
        if fingerprint and fit is not None and fit.state_fingerprint == fingerprint:
            folder = record.parent.parent
            found.append((len(list((folder / "markers").glob("*.json"))), folder))
    return max(found)[1] if found else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.png")
    p.add_argument("--releases", type=Path, help="folder of the release folders (adds the relative change)")
    p.add_argument("--title", default="Br35H 64 px, release files, true labels")
    a = p.parse_args()

    groups: dict[str, list[tuple[Path, EfficacyResult]]] = defaultdict(list)
    for path in a.results:
        r = EfficacyResult.read(path)
        budget = (r.extra.get("config") or {}).get("fidelity", {})
        key = json.dumps([r.method, r.params, budget.get("min_psnr_db")], sort_keys=True)
        groups[key].append((path, r))
    settings = []
    for members in groups.values():
        first = members[0][1]
        merged = EfficacyResult.from_dict({**first.to_dict(), "rows": [row.to_dict() for _, r in members
                                                                          for row in r.rows]})
        fid = dict(first.extra.get("fidelity") or {})
        if a.releases:  # measured again from the files: one definition for every row
            folder = _release_folder(a.releases, first.extra.get("fit", {}).get("state_fingerprint"))
            rel = relative_change(folder) if folder else None
            if rel:
                fid["max_relative_change"] = rel
        diag = next(iter((first.diagnostic or {}).values()), None)
        settings.append({"name": members[0][0].stem.replace("release_efficacy_", ""), "method": first.method,
                         "psnr": (first.extra.get("config") or {}).get("fidelity", {}).get("min_psnr_db"),
                         "fidelity": fid, "diagnostic": diag,
                         "summary": {s["attack"]: s for s in summarise(merged)},
                         "files": [path.name for path, _ in members],
                         "differs": _param_differences(settings[0]["params"], first.params, first.method)
                         if settings and settings[0]["method"] == first.method else [], "params": first.params})
    settings.sort(key=lambda s: -(s["psnr"] or 0))
    attacks = list(dict.fromkeys(k for s in settings for k in s["summary"]))

    def cell(s: dict, k: str) -> str:
        x = s["summary"].get(k)
        if x is None:
            return "not run"
        w = worst_seed(x)
        if w is None:
            return "no fitted run"
        runs = x["protected_runs"] + x["unfit_runs"]
        text = f"{w:.3f} ({x['clean']:.3f}" if x["clean"] is not None else f"{w:.3f} (no baseline"
        text += f"; train {x['train_min']:.3f})" if x["train_min"] is not None else "; did not fit)"
        if x.get("clean_part") is not None:
            text += f", clean part alone {x['clean_part']:.3f}: adds {w - x['clean_part']:+.3f}"
        return text + (f" x{runs}" if runs > 1 else "")

    lines = [f"# Fidelity/efficacy frontier ({a.title})", "",
             f"Worst seed's clean-test accuracy per attack (clean baseline; the attacker's lowest training accuracy); "
             f"stopped at or below {TARGET:.2f}; a mixing attack is held when it adds at most {MIX_MARGIN:.2f} to its "
             "clean part trained alone. xN: N runs.", "",
             "| setting | PSNR min / mean dB | SSIM min / mean | max abs change | relative change max / mean | "
             "diagnostic drop | " + " | ".join(attacks) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(attacks)]
    for s in settings:
        f = s["fidelity"]
        rel = f.get("max_relative_change")
        d = s["diagnostic"]
        lines.append(
            f"| {s['name']} | {f.get('psnr_db', {}).get('min')} / {f.get('psnr_db', {}).get('mean')} | "
            f"{f.get('ssim', {}).get('min')} / {f.get('ssim', {}).get('mean')} | {f.get('max_abs_units')} | "
            + (f"{100 * rel['max']:.1f} % / {100 * rel['mean']:.1f} %" if rel else "not measured") + " | "
            + (f"{d['accuracy_drop']:+.3f}" if d else "not measured") + " | "
            + " | ".join(cell(s, k) for k in attacks) + " |")
    lines += ["", "Parameters and files:", ""]
    for s in settings:
        lines.append(f"* {s['name']}: `{json.dumps(s['params'], sort_keys=True)}` from {', '.join(s['files'])}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for k in attacks:
        pts = [(s["fidelity"].get("psnr_db", {}).get("min"), worst_seed(s["summary"][k]))
               for s in settings if k in s["summary"]]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=k)
    ax.axhline(TARGET, color="black", linestyle=":", label=f"stopped ({TARGET:.2f})")
    ax.invert_xaxis()
    ax.set_xlabel("PSNR of the worst image, dB (left: closer to the original)")
    ax.set_ylabel("worst seed, clean-test accuracy")
    ax.set_ylim(0.4, 1.02)
    ax.set_title(f"Fidelity/efficacy frontier: {a.title}", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(a.out.with_suffix(".png"), dpi=110)
    print(f"wrote {a.out.with_suffix('.md')} and .png")


if __name__ == "__main__":
    main()
