"""The price of strength: one setting at several budgets, attack by attack (issue #26 item 6).

Reads one `medue evaluate` result per budget (the presets' measurements by default), and writes a markdown table and
a chart of the worst seed per attack against the budget, with the clean baseline and the 0.60 target. Only attacks
measured at every budget are compared; the rest are listed.

    python benchmarks/tradeoff.py --out benchmarks/results/tradeoff_lines_br35h_64
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medue.evidence import TARGET, summarise
from medue.presets import PRESETS
from medue.records import EfficacyResult


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="*", type=Path, help="one result per budget (default: the presets' results)")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.png")
    a = p.parse_args()
    paths = a.results or [preset.evidence_path for preset in PRESETS.values()]
    columns = []
    for path in paths:
        result = EfficacyResult.read(path)
        budget = (result.extra.get("config") or {}).get("fidelity", {})
        label = f"{budget.get('min_psnr_db'):g} dB / {budget.get('max_abs_units')} units"
        columns.append((label, {s["attack"]: s for s in summarise(result)}, path.name))
    common = [k for k in columns[0][1] if all(k in c[1] for c in columns)]
    others = sorted({k for c in columns for k in c[1]} - set(common))

    def worst(s: dict) -> float | None:
        values = [v for v in (s["protected_max"], s["unfit_max"]) if v is not None]
        return max(values) if values else None

    lines = ["Worst seed's clean-test accuracy per attack (clean baseline in brackets; target <= "
             f"{TARGET:.2f}); runs per cell after the slash.", "",
             "| attack | " + " | ".join(c[0] for c in columns) + " |", "|---|" + "---|" * len(columns)]
    for k in common:
        cells = []
        for _, summary, _ in columns:
            s = summary[k]
            w = worst(s)
            clean = "no baseline" if s["clean"] is None else f"{s['clean']:.3f}"
            cells.append(("not tested" if w is None else f"{w:.3f}")
                         + f" ({clean}) / {s['protected_runs'] + s['unfit_runs']}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "From: " + ", ".join(c[2] for c in columns) + "."]
    if others:
        lines.append("Measured at some budgets only (not compared): " + ", ".join(others) + ".")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    x = range(len(columns))
    for k in common:
        ys = [worst(c[1][k]) for c in columns]
        ax.plot(x, ys, marker="o", label=k)
    ax.axhline(TARGET, color="black", linestyle=":", label=f"target {TARGET:.2f}")
    ax.set_xticks(list(x), [c[0] for c in columns])
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("worst seed, clean-test accuracy")
    ax.set_title("The price of strength: lines on Br35H 64 px, release files, true labels", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(a.out.with_suffix(".png"), dpi=110)
    print(f"wrote {a.out.with_suffix('.md')} and .png")


if __name__ == "__main__":
    main()
