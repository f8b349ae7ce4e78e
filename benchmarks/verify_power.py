"""The measured power of ``medue verify`` (issue #35, item 3): true positives on models trained on a release's files,
false positives on models that never saw it.

``medue evaluate --save-models DIR`` saves every attacker it trains as TorchScript with a JSON sidecar saying what it
trained on. A model of ``--positives`` trained on ``protected`` files (or on a mix of them) saw the release; its
``clean`` and ``clean_part`` models did not. Every model of ``--negatives`` (releases made with another key or by
another method) did not see it either. Each model is verified against RELEASE (``medue verify``'s own code path) and
the table gives, per attack, how many were detected at ``--alpha``. Writes OUT.md and OUT.json; nothing is typed in.

    MEDUE_KEY=... python benchmarks/verify_power.py /work/evals/fields_32db_release \
        --positives /work/evals/models/fields_32db* --negatives /work/evals/models/fields_32db_otherkey \
        --out benchmarks/results/verify_power_fields_32db
    python benchmarks/verify_power.py --merge A.json B.json --out benchmarks/results/verify_power_both
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

from medue.verify import CONTROLS, PROBES, NotVerifiable, verify


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("release", type=Path, nargs="?", help="the release's output folder (its key in $MEDUE_KEY)")
    p.add_argument("--merge", nargs="+", type=Path, help="instead of verifying: pool the rows of earlier OUT.json "
                                                         "files (several releases, each verified with its own key)")
    p.add_argument("--positives", nargs="*", type=Path, default=[], help="--save-models folders of this release")
    p.add_argument("--negatives", nargs="*", type=Path, default=[], help="--save-models folders of other releases")
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--probes", type=int, default=PROBES)
    p.add_argument("--controls", type=int, default=CONTROLS)
    p.add_argument("--labels-only", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    rows: list[dict] = []
    if a.merge:
        parts = [json.loads(f.read_text()) for f in a.merge]
        rows = [{**r, "model": f"{part['release']}: {r['model']}"} for part in parts for r in part["rows"]]
        _write(a.out, " + ".join(part["release"] for part in parts), rows, parts[0]["alpha"], a.probes, a.controls)
        return
    key = os.environ["MEDUE_KEY"]
    seen: set[str] = set()  # a clean model trained twice with the same seed is the same model: count it once
    for folder, of_release in [(f, True) for f in a.positives] + [(f, False) for f in a.negatives]:
        for model in sorted(folder.glob("*.pt")):
            digest = _weights_digest(model)
            if digest in seen:
                print(f"{folder.name}/{model.stem}: the same model as one above, skipped", flush=True)
                continue
            seen.add(digest)
            info = json.loads(model.with_suffix(".json").read_text())
            saw = of_release and info.get("trained_on") == "protected"
            try:
                r = verify(a.release, model, key, probes=a.probes, controls=a.controls, alpha=a.alpha,
                           labels_only=a.labels_only)
            except NotVerifiable as exc:
                raise SystemExit(str(exc)) from None
            rows.append({"model": f"{folder.name}/{model.stem}", "attack": info.get("attack"),
                         "trained_on": info.get("trained_on") if of_release or info.get("trained_on") != "protected"
                         else f"another release ({folder.name})",
                         "saw_release": saw, "clean_test_accuracy": info.get("clean_test_accuracy"),
                         "p_value": r.p_value, "rank_p_value": r.rank_p_value, "detected": r.detected,
                         "queries": r.queries, "seconds": r.seconds, "mode": r.mode, "claim": r.claim})
            print(f"{rows[-1]['model']}: saw {saw}, p {r.p_value:.3g}, detected {r.detected}", flush=True)
    _write(a.out, a.release.name, rows, a.alpha, a.probes, a.controls)


def _weights_digest(path: Path) -> str:
    """A digest of a TorchScript model's weights (its file's bytes differ between two saves of one model)."""
    import torch

    h = hashlib.sha256()
    for name, value in sorted(torch.jit.load(str(path), map_location="cpu").state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _write(out: Path, release: str, rows: list[dict], alpha: float, probes: int, controls: int) -> None:
    pos = [r for r in rows if r["saw_release"]]
    neg = [r for r in rows if not r["saw_release"]]
    by_attack: dict[str, list[dict]] = {}
    for r in pos:
        by_attack.setdefault(r["attack"], []).append(r)
    mode = rows[0]["mode"] if rows else "?"
    lines = [f"# medue verify: measured power ({release}, {mode}, alpha {alpha}, {probes} probes x "
             f"{controls + 1} fields)", "",
             f"True positives: {sum(r['detected'] for r in pos)} of {len(pos)} models trained on the release; false "
             f"positives: {sum(r['detected'] for r in neg)} of {len(neg)} models that never saw it.", "",
             "| attack | models trained on the release | detected | p-values |", "|---|---|---|---|"]
    for attack, rs in sorted(by_attack.items()):
        lines.append(f"| {attack} | {len(rs)} | {sum(r['detected'] for r in rs)} | "
                     + ", ".join(f"{r['p_value']:.2g}" for r in rs) + " |")
    lines += ["", "| model | trained on | clean-test accuracy | p-value | rank p | detected | queries | s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['trained_on']} | {r['clean_test_accuracy']} | {r['p_value']:.3g} | "
                     f"{r['rank_p_value']:.3g} | {r['detected']} | {r['queries']} | {r['seconds']} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    claims = sorted({r.get("claim", "key") for r in rows})
    out.with_suffix(".json").write_text(json.dumps({"release": release, "alpha": alpha, "claim": "/".join(claims),
                                                    "rows": rows}, indent=2))
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
