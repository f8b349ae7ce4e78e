"""Merge `medue evaluate` results of ONE release (run in parts, or in parallel processes) into one result.

Every part must have read the same release (the same protector state fingerprint, dataset, method and
parameters); the rows are concatenated, each keeping its own epochs and seconds, and the settings of every part are
kept under ``parts``. A partial part (``complete: false``, written while its suite was still running) is merged as
what it is, and the merged result says so.

    python benchmarks/merge_efficacy.py A.json B.json --out benchmarks/results/release_efficacy_NAME --name NAME

``--same-setting`` merges results of releases of one setting that were fitted with other draws (see :func:`merge`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medue.efficacy.release import results_markdown

SAME = ("schema", "method", "params", "image_size", "labels_used")


def merge(results: list[dict], name: str, same_setting: bool = False) -> dict:
    """One result from ``results`` of the same release (raises ValueError naming what differs). ``same_setting``:
    the parts may come from releases of the same setting fitted with other draws (another release name gives a
    placed field another keyed phase; a mixing attack needs a release with a held-out pool): method, parameters and
    dataset must still match, and every part's fit fingerprint is kept under ``settings.parts``."""
    first = results[0]
    for other in results[1:]:
        differs = [k for k in SAME if other.get(k) != first.get(k)]
        if other["fit"].get("state_fingerprint") != first["fit"].get("state_fingerprint") and not same_setting:
            differs.append("fit.state_fingerprint")
        if other["dataset"].get("name") != first["dataset"].get("name"):
            differs.append("dataset")
        if differs:
            raise ValueError(f"{other.get('name')} is not a result of the same release as {first.get('name')}: "
                             + ", ".join(differs))
    merged = {k: v for k, v in first.items() if k not in ("rows", "settings", "attack_seconds", "not_run")}
    rows = [r for res in results for r in res["rows"]]
    ran = {r.get("attack") for r in rows}
    merged.update(name=name, rows=rows, attack_seconds_summed=True,
                  complete=all(res.get("complete", True) for res in results),
                  attacks={k: v for res in results for k, v in (res.get("attacks") or {}).items() if k in ran},
                  not_run=[n for res in results for n in res.get("not_run", [])],
                  attack_seconds=round(sum(r["seconds"] for res in results for r in res["rows"]), 1),
                  settings={"suite": "full (merged parts)", "parts": [
                      {"name": res.get("name"), "complete": res.get("complete", True),
                       "state_fingerprint": res["fit"].get("state_fingerprint"), **res.get("settings", {})}
                      for res in results]},
                  diagnostic={k: v for res in results for k, v in (res.get("diagnostic") or {}).items()})
    return merged


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    p.add_argument("--name", required=True)
    p.add_argument("--same-setting", action="store_true",
                   help="accept parts from releases of the same method, parameters and dataset fitted with other "
                        "draws (each part's fit fingerprint is kept)")
    args = p.parse_args()
    try:
        merged = merge([json.loads(r.read_text()) for r in args.results], args.name, args.same_setting)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(merged, indent=2))
    args.out.with_suffix(".md").write_text(results_markdown(merged))
    print(f"wrote {args.out.with_suffix('.json')} and .md: {len(merged['rows'])} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
