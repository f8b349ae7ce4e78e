"""Efficacy audit on the shipped Br35H subset: clean-test accuracy of models trained on protected vs clean data.

    python benchmarks/efficacy.py                      # all methods, CPU or GPU (auto)
    python benchmarks/efficacy.py --methods salm em --out benchmarks/results/efficacy_quick

Writes ``<out>.json`` and ``<out>.md``. Same logic as ``medue evaluate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medue.efficacy import EfficacyConfig, results_markdown, run_efficacy
from medue.efficacy.countermeasures import ALL


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["salm", "em", "sem", "conv", "uc"])
    p.add_argument("--countermeasures", nargs="*", default=list(ALL))
    p.add_argument("--architectures", nargs="+", default=["resnet18", "monai_classifier"])
    p.add_argument("--countermeasure-architecture", default="resnet18",
                   help="the model trained under each countermeasure (default: the ResNet-18 layout)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/efficacy_cpu"))
    args = p.parse_args(argv)
    config = EfficacyConfig(methods={m: {} for m in args.methods}, countermeasures=tuple(args.countermeasures),
                            architectures=tuple(args.architectures), device=args.device,
                            countermeasure_architecture=args.countermeasure_architecture)
    res = run_efficacy(config, log=lambda s: print(s, flush=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str))
    args.out.with_suffix(".md").write_text(results_markdown(res))
    print(results_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
