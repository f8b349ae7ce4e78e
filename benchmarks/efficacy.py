"""Efficacy audit on the shipped Br35H subset: clean-test accuracy of models trained on protected vs clean data.

    python benchmarks/efficacy.py                      # all methods, CPU or GPU (auto)
    python benchmarks/efficacy.py --methods salm em --out benchmarks/results/efficacy_quick

Writes ``<out>.json`` and ``<out>.md``. This is ``medue evaluate`` (same options, see ``--help``) with the
output defaulting to ``benchmarks/results/efficacy_cpu``.
"""

from __future__ import annotations

import sys

from medue.cli import main as medue_main


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", "benchmarks/results/efficacy_cpu"]
    return medue_main(["evaluate", *args])


if __name__ == "__main__":
    sys.exit(main())
