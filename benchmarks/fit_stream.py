"""The streamed dataset-level fit at CT resolution: surrogate cost per layout, then a whole fit through ``medue fit``.

Part 1 times one surrogate training step (forward + backward, a batch of ``--batch`` slices) and one noise step
(the gradient with respect to the input) of each surrogate layout (:mod:`medue.protect.surrogate`) at 256 and
512 px: why ``"strided"`` is the layout for a fit at full CT resolution.

Part 2 writes ``--volumes`` synthetic CT-like volumes (``medue.testing.make_nifti``, int16) of 512 x 512 x
``--slices``, labelled ``a``/``b``, and fits sample-wise EM on every slice with :func:`medue.pipeline.runner.fit_release`
(the code ``medue fit`` runs): slices streamed from ``private/fit/slices.f32``, a checkpoint every round. It reports
the fit's seconds per round, the store's size on disk and the peak RSS of the process that fits (a child of this
one, started after the synthetic volumes are written; ``ru_maxrss``, torch itself included), then interrupts a second fit after its first round and continues it with ``resume``, and checks that
the continued fit wrote the same noise as the uninterrupted one.

    python benchmarks/fit_stream.py --out benchmarks/results/fit_stream_cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def surrogate_cost(batch: int, reps: int, archs: list[str], sizes: list[int]) -> list[dict]:
    from medue.protect.surrogate import make_surrogate

    rows = []
    for size in sizes:
        x = torch.rand(batch, 1, size, size)
        y = torch.arange(batch) % 2
        for arch in archs:
            model = make_surrogate(arch, 2, seed=0, device=torch.device("cpu"))
            opt = torch.optim.SGD(model.parameters(), lr=0.01)

            def train() -> None:
                model.train()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()

            def noise() -> None:
                model.eval()
                d = torch.zeros_like(x, requires_grad=True)
                loss = torch.nn.functional.cross_entropy(model(x + d), y)
                torch.autograd.grad(loss, d)

            rows.append({"size": size, "surrogate": arch, "batch": batch,
                         "train_step_s": round(_time(train, reps), 4), "noise_step_s": round(_time(noise, reps), 4),
                         "parameters": sum(p.numel() for p in model.parameters())})
            print(rows[-1], flush=True)
    return rows


def _config(root: Path, out: Path, args: argparse.Namespace) -> Path:
    cfg = {"name": "fit-stream", "input": str(root / "in"), "output": str(out),
           "key": {"env": "MEDUE_BENCH_UNSET", "file": str(root / "site.key")},
           "labels": {"source": "table", "table": str(root / "labels.csv")},
           "protect": {"method": "em", "params": {
               "mode": "samplewise", "surrogate": args.surrogate, "epsilon": 8, "max_rounds": args.rounds,
               "stop_accuracy": 1.0, "inner_steps": args.inner_steps, "train_steps": args.train_steps,
               "batch_size": args.batch}},
           "execution": {"device": args.device}, "tracking": {"enabled": False}, "report": {"enabled": False}}
    path = root / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def streamed_fit(args: argparse.Namespace) -> dict:
    """Writes the synthetic release, then fits it in a child process, so that the child's peak RSS is the fit's."""
    import multiprocessing

    from medue.testing import make_nifti

    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        root = Path(tmp)
        for k in range(args.volumes):
            make_nifti(root / "in" / f"vol{k}.nii", shape=(512, 512, args.slices), seed=k, slope=1.0, inter=-1024.0)
        (root / "labels.csv").write_text("path,label\n" + "".join(f"vol{k}.nii,{'ab'[k % 2]}\n"
                                                                  for k in range(args.volumes)))
        (root / "site.key").write_text("benchmark-key-0123456789")
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            result = pool.apply(_fit_in_child, (root, args))
        result["peak_rss_mb_fit_process"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
        return result


def _fit_in_child(root: Path, args: argparse.Namespace) -> dict:
    from medue.pipeline.config import load_config
    from medue.pipeline.runner import fit_release

    torch.set_num_threads(args.threads)
    store_bytes = args.volumes * args.slices * 512 * 512 * 4
    said: list[tuple[float, str]] = []
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        said.append((round(time.perf_counter() - t0, 2), msg))
        print(f"[{said[-1][0]:8.1f} s] {msg}", flush=True)

    whole = fit_release(load_config(_config(root, root / "whole", args)), progress=log)
    seconds = round(time.perf_counter() - t0, 2)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this child: the fits only
    rounds = [t for t, m in said if m.startswith("round ")]

    # interrupted after round 1, then continued
    def stop(msg: str) -> None:
        log(msg)
        if msg.startswith("round 1/"):
            raise KeyboardInterrupt

    part = load_config(_config(root, root / "part", args))
    try:
        fit_release(part, progress=stop)
    except KeyboardInterrupt:
        pass
    cont = fit_release(part, resume=True, progress=log)
    same = all(np.array_equal(np.load(p)["delta"], np.load(root / "part" / "private" / "noise" / p.name)["delta"])
               for p in sorted((root / "whole" / "private" / "noise").glob("*.npz")))
    return {"volumes": args.volumes, "slices_per_volume": args.slices, "size": 512, "surrogate": args.surrogate,
            "rounds": args.rounds, "inner_steps": args.inner_steps, "train_steps": args.train_steps,
            "batch": args.batch, "fit_seconds": whole["fit_seconds"], "wall_seconds": seconds,
            "round_end_times_s": rounds, "store_bytes": store_bytes, "peak_rss_mb": round(rss_mb, 1),
            "accuracy_per_round": whole["surrogate_accuracy_per_round"],
            "continued_after_round": cont.get("resumed_after_round"), "continued_equals_whole": bool(same)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", type=int, default=4)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--inner-steps", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--surrogate", default="strided")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads of the fit")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--cost-surrogates", nargs="+", default=["small", "strided", "resnet18"],
                    help="layouts to time (resnet18 at 512 px takes minutes per step on a 2-core CPU)")
    ap.add_argument("--cost-sizes", nargs="+", type=int, default=[256, 512])
    ap.add_argument("--scratch", default=None, help="folder for the synthetic release (default: the system's temp)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__, "threads": torch.get_num_threads()},
              "command": "python benchmarks/fit_stream.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                  if k not in ("out", "skip_cost", "scratch", "cost_surrogates", "cost_sizes", "threads")
                  and v is not None)
              + " --cost-surrogates " + " ".join(args.cost_surrogates)
              + " --cost-sizes " + " ".join(map(str, args.cost_sizes)),
              "surrogate_cost": [] if args.skip_cost else surrogate_cost(args.batch, args.reps, args.cost_surrogates,
                                                                          args.cost_sizes)}
    result["streamed_fit"] = streamed_fit(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [f"# Streamed fit at 512 px ({result['machine']['processor'] or result['machine']['platform']}, "
             f"{result['machine']['threads']} threads)", "", f"`{result['command']}`", ""]
    if result["surrogate_cost"]:
        lines += ["| size | surrogate | parameters | train step (s, batch) | noise step (s, batch) |", "|---|---|---|---|---|"]
        lines += [f"| {r['size']} | {r['surrogate']} | {r['parameters']} | {r['train_step_s']} | {r['noise_step_s']} |"
                  for r in result["surrogate_cost"]]
    f = result["streamed_fit"]
    lines += ["", "| volumes x slices | store on disk (MB) | fit (s) | round ends (s) | peak RSS (MB) | "
              "accuracy per round | continued after round | continued = uninterrupted |", "|---|---|---|---|---|---|---|---|",
              f"| {f['volumes']} x {f['slices_per_volume']} | {f['store_bytes'] / 2**20:.0f} | {f['fit_seconds']} | "
              f"{f['round_end_times_s']} | {f['peak_rss_mb']} | {f['accuracy_per_round']} | "
              f"{f['continued_after_round']} | {f['continued_equals_whole']} |"]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
