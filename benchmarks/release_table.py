"""One markdown table of a release's attacks from several `medue evaluate` results of the same release setting.

Results of one setting are often written in parts (sessions, seeds, attack groups, epochs). This reads them all,
refuses results of another method, parameters, dataset or budget than the first, and prints per attack and epochs:
the clean baseline(s), every protected seed with the attacker's training accuracy (marked when below the 0.98 fit
bar), the worst seed, and the files the rows come from. Nothing is typed in by hand.

    python benchmarks/release_table.py benchmarks/results/release_efficacy_br35h_128_nifti_salm_cpu*.json \
        benchmarks/results/release_efficacy_br35h_128_nifti_lines_*.json
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from medue.evidence import _param_differences
from medue.records import EfficacyResult

FIT = 0.98


def _cell(rows: list) -> str:
    return " / ".join(f"{r.clean_test_accuracy:.3f} ({r.train_accuracy:.3f}{'' if r.fit else '*'})" for r in rows)


def table(paths: list[Path]) -> str:
    results = [(p, EfficacyResult.read(p)) for p in paths]
    first_path, first = results[0]
    budget = (first.extra.get("config") or {}).get("fidelity", {})
    problems = []
    for p, r in results[1:]:
        differs = _param_differences(first.params, r.params, r.method or "")
        their_budget = (r.extra.get("config") or {}).get("fidelity", {})
        if r.method != first.method or differs or r.dataset.get("name") != first.dataset.get("name") or \
                {k: their_budget.get(k) for k in ("min_psnr_db", "max_abs_units")} != \
                {k: budget.get(k) for k in ("min_psnr_db", "max_abs_units")}:
            what = ", ".join(differs) or "method, dataset or budget"
            problems.append(f"{p.name}: another setting than {first_path.name} ({what})")
    if problems:
        raise SystemExit("\n".join(problems))
    groups: dict[tuple[str, int], dict[str, list]] = defaultdict(lambda: {"clean": [], "protected": [], "files": []})
    for p, r in results:
        for row in r.rows:
            g = groups[(row.key, int(row.extra.get("epochs", 0)))]
            g[row.training_data].append(row)
            if p.stem not in g["files"]:
                g["files"].append(p.stem)
    lines = [f"Method {first.method}, dataset {first.dataset.get('name')}, PSNR >= {budget.get('min_psnr_db')} dB, "
             f"|delta| <= {budget.get('max_abs_units')}. Clean-test accuracy (training accuracy; * below {FIT}: the "
             "model did not fit its training set; above the target it still shows what the protection let through).",
             "", "| attack | epochs | clean data | release, per seed | worst seed | from |", "|---|---|---|---|---|---|"]
    for (attack, epochs), g in sorted(groups.items()):
        prot = sorted(g["protected"], key=lambda r: r.seed)
        worst = max((r.clean_test_accuracy for r in prot), default=None)
        lines.append(f"| {attack} | {epochs} | {_cell(g['clean']) or 'not run'} | "
                     + " / ".join(f"seed {r.seed}: {r.clean_test_accuracy:.3f} ({r.train_accuracy:.3f}"
                                  f"{'' if r.fit else '*'})" for r in prot)
                     + f" | {'' if worst is None else f'{worst:.3f}'} | {', '.join(g['files'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--out", type=Path, help="write the table here as well")
    a = p.parse_args()
    text = table(a.results)
    print(text, end="")
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
