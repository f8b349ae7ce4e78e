"""Sweep SALM (or any protector's) parameters on the shipped Br35H subset and report efficacy and fidelity.

    python benchmarks/salm_sweep.py --grid mask_ratio=0.1,0.2,0.3 mask_update=step,sticky
    python benchmarks/salm_sweep.py --method em --grid epsilon=4,8 --architectures resnet18

Every combination of the grid protects the same training split, then each architecture is trained on it and
its clean-test accuracy is recorded (plus the clean baseline once). Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

from medue.device import derive_seed, resolve_device
from medue.efficacy import EfficacyConfig, load_splits, protect_dataset
from medue.efficacy.train import TrainSettings, train_classifier


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["a=1,2", "b=x"]`` -> ``{"a": [1, 2], "b": ["x"]}`` (numbers parsed as int or float)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"--grid entries look like name=v1,v2; got {item!r}")
        parsed: list[Any] = []
        for v in values.split(","):
            for cast in (int, float):
                try:
                    parsed.append(cast(v))
                    break
                except ValueError:
                    continue
            else:
                parsed.append(v)
        grid[name] = parsed
    return grid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="salm")
    p.add_argument("--grid", nargs="*", default=["mask_ratio=0.1,0.2,0.3", "mask_update=step,sticky"])
    p.add_argument("--architectures", nargs="+", default=["resnet18"])
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/salm_sweep_cpu"))
    args = p.parse_args(argv)
    grid = parse_grid(args.grid)
    cfg = EfficacyConfig(device=args.device)
    device = resolve_device(cfg.device)
    x_tr, y_tr, x_te, y_te, _ = load_splits(cfg)
    settings = TrainSettings()

    def train(arch: str, x: Any) -> dict[str, float]:
        t0 = time.perf_counter()
        r = train_classifier(arch, x, y_tr, x_te, y_te, settings=settings, seed=derive_seed(cfg.seed, arch),
                             device=device)
        return {**r, "seconds": round(time.perf_counter() - t0, 1)}

    rows: list[dict[str, Any]] = [{"params": "clean", **{a: train(a, x_tr) for a in args.architectures}}]
    print(json.dumps(rows[-1]), flush=True)
    for combo in itertools.product(*grid.values()):
        params = dict(zip(grid.keys(), combo))
        protected, stats, _ = protect_dataset(args.method, params, x_tr, y_tr, key=cfg.key, device=device)
        rows.append({"params": params, "protection": stats, **{a: train(a, protected) for a in args.architectures}})
        print(json.dumps(rows[-1], default=str), flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"method": args.method, "device": str(device), "train": len(x_tr), "test": len(x_te),
              "image_size": cfg.image_size, "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    lines = [f"# {args.method} sweep ({device}; {len(x_tr)} train / {len(x_te)} test, {cfg.image_size} px)", "",
             "| params | PSNR dB | SSIM | fraction changed | images/s | "
             + " | ".join(f"{a} test (train)" for a in args.architectures) + " |",
             "|---" * (5 + len(args.architectures)) + "|"]
    for row in rows:
        s = row.get("protection", {})
        cells = [str(row["params"]), *(str(s.get(k, "-")) for k in ("psnr_db", "ssim", "fraction_changed",
                                                                     "images_per_second"))]
        cells += [f"{row[a]['test_accuracy']:.3f} ({row[a]['train_accuracy']:.2f})" for a in args.architectures]
        lines.append("| " + " | ".join(cells) + " |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
