"""Scale benchmark: volumes/s, MB/s and peak memory of one release job with 1 worker, 2 workers and Ray Data.

    python benchmarks/scale.py                                 # 48 volumes of 24 x 256 x 256 int16
    python benchmarks/scale.py --volumes 200 --engines local-1 # the "many files" memory run
    python benchmarks/scale.py --volumes 48 --engines local-1 local-2 ray-2 --out benchmarks/results/scale_cpu

Each engine runs ``medue run`` on the same synthetic NIfTI inputs in a fresh child process (fresh output folder,
MLflow and the HTML report off so the numbers are the per-volume path: read, protect, fidelity gate, atomic
export with re-read verification, marker). The fit of the protector on a sample of slices is timed separately
and is the same for every engine. Peak memory is the largest summed RSS of the child's whole process tree
(Ray's raylet and workers included), sampled from /proc every 0.1 s (Linux only).

Bounded memory: the executors stream items (paths in, markers out), so peak RSS should not grow with the number
of volumes; the result file states the dataset size next to the peak so the two can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ENGINES = {"local-1": ("local", 1), "local-2": ("local", 2), "ray-1": ("ray", 1), "ray-2": ("ray", 2)}


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_rss_bytes(pid: int) -> int:
    """Summed resident memory of ``pid`` and all its descendants (Linux /proc)."""
    tree, stack, total = _children(), [pid], 0
    while stack:
        p = stack.pop()
        stack.extend(tree.get(p, []))
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total


def make_inputs(folder: Path, volumes: int, slices: int, size: int) -> int:
    """Write ``volumes`` synthetic NIfTI files; returns their total bytes."""
    from medue.testing import make_nifti

    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for k in range(volumes):
        path = folder / f"v{k:05d}.nii"
        if not path.exists():
            make_nifti(path, shape=(size, size, slices), seed=k)
        total += path.stat().st_size
    return total


def run_engine(name: str, inputs: Path, work: Path, key_file: Path, params: dict[str, Any]) -> dict[str, Any]:
    from medue.layout import OutputLayout
    from medue.records import FitRecord

    backend, workers = ENGINES[name]
    out = work / f"out-{name}"
    cfg = {"name": f"scale-{name}", "input": str(inputs), "output": str(out), "deidentification": "ignore",
           "key": {"env": "MEDUE_SCALE_UNSET", "file": str(key_file)},
           "protect": {"method": "salm", "params": params, "fit_max_slices": 64, "fit_size": 64},
           "fidelity": {"min_psnr_db": 30, "min_ssim": 0.9},
           "execution": {"device": "auto", "workers": workers, "backend": backend},
           "tracking": {"enabled": False}, "report": {"enabled": False}}
    cfg_path = work / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    code = ("import json, sys, time\n"
            "from medue.pipeline.config import load_config\n"
            "from medue.pipeline.runner import run_pipeline\n"
            f"s = run_pipeline(load_config({str(cfg_path)!r}))\n"
            "print('RESULT ' + json.dumps({'counts': s.counts, 'seconds': s.seconds}))\n")
    peak, done = 0, threading.Event()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_bytes(proc.pid))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{stderr[-3000:]}")
    result = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
    fit = FitRecord.read(OutputLayout(out).fit_record)
    return {"engine": name, "backend": backend, "workers": workers, "wall_seconds": round(wall, 2),
            "pipeline_seconds": result["seconds"], "fit_seconds": fit.fit_seconds if fit else None, "counts": result["counts"],
            "peak_rss_mb": round(peak / 2**20, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", type=int, default=48)
    p.add_argument("--slices", type=int, default=24)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--engines", nargs="+", default=["local-1", "local-2", "ray-2"], choices=list(ENGINES))
    p.add_argument("--inner-steps", type=int, default=5,
                   help="SALM sign steps per slice (default 5 keeps CPU runs short)")
    p.add_argument("--workdir", type=Path, help="keep inputs/outputs here (default: a temp folder)")
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    params = {"epsilon": 8, "mask_ratio": 0.1, "max_rounds": 2, "inner_steps": args.inner_steps, "train_steps": 10}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        key_file = work / "bench.key"
        key_file.write_text("scale-benchmark-key")
        dataset_bytes = make_inputs(work / "in", args.volumes, args.slices, args.size)
        rows = []
        for name in args.engines:
            row = run_engine(name, work / "in", work, key_file, params)
            per_volume_s = row["pipeline_seconds"] - row["fit_seconds"]
            row["volumes_per_second"] = round(args.volumes / per_volume_s, 3)
            row["mb_per_second"] = round(dataset_bytes / 2**20 / per_volume_s, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = rows[0]["volumes_per_second"]
    for row in rows:
        row["speedup_vs_first"] = round(row["volumes_per_second"] / base, 2)
    result = {"schema": "medue.scale-benchmark/1", "volumes": args.volumes,
              "shape": [args.slices, args.size, args.size],
              "dataset_mb": round(dataset_bytes / 2**20, 1), "protector_params": params,
              "cpu_count": os.cpu_count(), "platform": platform.platform(), "rows": rows}
    lines = [f"# Scale benchmark: {args.volumes} NIfTI volumes {args.slices}x{args.size}x{args.size} int16, "
             f"{result['dataset_mb']} MB, {os.cpu_count()} CPUs", "",
             "| engine | volumes/s | MB/s | speed-up | peak RSS MB (process tree) | fit s | wall s | done |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['volumes_per_second']} | {r['mb_per_second']} | {r['speedup_vs_first']} | "
                     f"{r['peak_rss_mb']} | {r['fit_seconds']} | {r['wall_seconds']} | {r['counts'].get('done', 0)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
        args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
