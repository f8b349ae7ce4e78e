"""A CT-sized release on one machine: per-stage seconds, s per megavoxel, peak RSS, and I/O against a plain loop.

Writes two synthetic CT-like volumes (``medue.testing.phantom``, int16, rescale -1024) of 512 x 512 x SLICES as a
DICOM series and as NIfTI, labelled ``a``/``b``, and releases them with the default protection settings of
``pipelines/default.yaml`` (class-wise SALM, flat placement) through ``run_pipeline``: the shipped code path.
Stage times come from each item's marker (``stage_seconds``); peak RSS is this process's (``ru_maxrss``).
The plain loop reads every file with pydicom / nibabel and writes it back unchanged, the floor for I/O.

    python benchmarks/ct_volume.py --slices 64 --out benchmarks/results/ct_volume_cpu_64
    python benchmarks/ct_volume.py --slices 64 --method salm-samplewise --set max_rounds=1 --out ...

With ``--method`` (and ``--set name=value`` for its parameters, YAML-typed) the release uses that method instead of
the default's, with the default fidelity gate left out. A sampling thread records the process's resident memory
every 50 ms and, at its peak, the innermost frames of the main thread (``peak_where``), so that a peak can be
located without a profiler.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import yaml


def _write_inputs(root: Path, slices: int, size: int) -> None:
    from medue.testing import make_dicom_series, make_nifti

    for k, label in enumerate(("a", "b")):
        make_dicom_series(root / "dicom" / f"vol{k}", slices=slices, size=size, seed=k, shuffle_names=False)
        make_nifti(root / "nifti" / f"vol{k}.nii", shape=(size, size, slices), seed=k, slope=1.0, inter=-1024.0)
    lines = ["path,label"] + [f"dicom/vol{k},{lab}" for k, lab in enumerate("ab")] + \
        [f"nifti/vol{k}.nii,{lab}" for k, lab in enumerate("ab")]
    (root.parent / "labels.csv").write_text("\n".join(lines) + "\n")


def _plain_loop(root: Path, scratch: Path) -> float:
    import nibabel as nib
    import pydicom

    t = time.perf_counter()
    for f in sorted(root.rglob("*.dcm")):
        ds = pydicom.dcmread(f)
        _ = ds.pixel_array
        ds.save_as(scratch / f.name)
    for f in sorted(root.rglob("*.nii")):
        img = nib.load(str(f))
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header), str(scratch / f.name))
    return time.perf_counter() - t


class _MemorySampler(threading.Thread):
    """Samples this process's resident set (``/proc/self/statm``) and, at each new peak, the main thread's stack."""

    def __init__(self, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.period, self.peak_mb, self.where = period, 0.0, []
        self._halt = threading.Event()
        self._page = __import__("os").sysconf("SC_PAGE_SIZE")
        self._main = threading.main_thread().ident

    def run(self) -> None:
        while not self._halt.wait(self.period):
            try:
                rss = int(Path("/proc/self/statm").read_text().split()[1]) * self._page / 2**20
            except OSError:
                return
            if rss > self.peak_mb:
                self.peak_mb = rss
                frame = sys._current_frames().get(self._main)
                stack = traceback.extract_stack(frame) if frame is not None else []
                self.where = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack
                              if "medue" in f.filename][-6:]

    def stop(self) -> None:
        self._halt.set()
        self.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ct_volume_cpu"))
    parser.add_argument("--preset", help="protect with this preset (`medue methods`) instead of the default's "
                                         "method, with the preset's fidelity budget")
    parser.add_argument("--method", help="protect with this method (`medue methods`) instead of the default's")
    parser.add_argument("--no-labels", action="store_true",
                        help="release without labels (a label-agnostic method clusters the slices itself)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter of --method (repeatable; the value is read as YAML)")
    args = parser.parse_args()
    params = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}  # YAML-typed values

    from medue.layout import OutputLayout
    from medue.pipeline.config import parse_config
    from medue.pipeline.runner import run_pipeline
    from medue.records import FitRecord

    work = Path(tempfile.mkdtemp(prefix="medue-ct-"))
    try:
        inputs = work / "in"
        _write_inputs(inputs, args.slices, args.size)
        plain_dir = work / "plain"
        plain_dir.mkdir()
        plain_s = _plain_loop(inputs, plain_dir)
        default = yaml.safe_load(Path("pipelines/default.yaml").read_text())
        if args.preset:
            default = {**default, "protect": {"preset": args.preset}, "fidelity": {}}
        if args.method:
            default = {**default, "protect": {"method": args.method, "params": params}, "fidelity": {}}
        cfg = parse_config({**default, "name": "ct-benchmark", "input": str(inputs), "output": str(work / "out"),
                            "labels": None if args.no_labels else {"source": "table",
                                                                   "table": str(work / "labels.csv")},
                            "execution": {"device": args.device, "workers": 1},
                            "tracking": {"enabled": False},
                            "report": {"enabled": True, "efficacy_results": None},
                            "key": {"env": "MEDUE_KEY", "file": str(Path("pipelines/demo.key").resolve())}},
                           base_dir="pipelines")
        sampler = _MemorySampler()
        sampler.start()
        t = time.perf_counter()
        summary = run_pipeline(cfg)
        total_s = time.perf_counter() - t
        sampler.stop()
        fit = FitRecord.read(OutputLayout(work / "out").fit_record)
        items = []
        for m in summary.markers:
            voxels = float(np.prod(m.shape))
            st = m.stage_seconds or {}
            items.append({"format": m.format, "status": m.status, "shape": m.shape,
                          "stage_seconds": st, "seconds": m.seconds,
                          "protect_s_per_megavoxel": round(st.get("protect", 0) / (voxels / 1e6), 5),
                          "protect_s_per_slice": round(st.get("protect", 0) / m.shape[0], 5),
                          "item_s_per_megavoxel": round(m.seconds / (voxels / 1e6), 5)})
        io_s = sum(i["stage_seconds"].get("read", 0) + i["stage_seconds"].get("write_verify", 0) for i in items)
        result = {
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpus": len(__import__("os").sched_getaffinity(0)),
            "device": args.device, "preset": args.preset, "slices": args.slices, "size": args.size, "volumes": len(items),
            "method": args.method, "labels": not args.no_labels, "params": params,
            "fit_seconds": fit.fit_seconds, "release_seconds": round(total_s, 2),
            "release_tail_seconds": round(total_s - sum(i["seconds"] for i in items) - (fit.fit_seconds or 0),
                                          2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "sampled_peak_rss_mb": round(sampler.peak_mb, 1), "peak_where": sampler.where,
            "plain_read_write_seconds": round(plain_s, 2), "medue_read_write_verify_seconds": round(io_s, 2),
            "io_ratio_plain_over_medue": round(plain_s / io_s, 3) if io_s else None,
            "items": items,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [f"# CT-sized release: 2 volumes x 2 formats of {args.size}x{args.size}x{args.slices} ({result['machine']}, "
             f"{result['cpus']} CPUs, device {args.device}, "
             + (f"preset {args.preset})" if args.preset else
                f"method {args.method} {' '.join(args.set)}" + (", no labels)" if args.no_labels else ")")
                if args.method else "the default's protection)"), "",
             f"Release {result['release_seconds']} s (fit {result['fit_seconds']} s, tail {result['release_tail_seconds']} s); "
             f"peak RSS {result['peak_rss_mb']} MB; I/O: plain pydicom/nibabel loop {result['plain_read_write_seconds']} s, "
             f"medue read + write + verify {result['medue_read_write_verify_seconds']} s "
             f"(plain / medue = {result['io_ratio_plain_over_medue']}); peak sampled at "
             f"{' < '.join(reversed(result['peak_where'])) or 'start'}.", "",
             "| format | shape | read s | protect s | check s | write+verify s | delta s | item s | protect s/slice | "
             "item s/Mvox |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i in items:
        st = i["stage_seconds"]
        lines.append(f"| {i['format']} | {'x'.join(map(str, i['shape']))} | {st.get('read')} | {st.get('protect')} | "
                     f"{st.get('check')} | {st.get('write_verify')} | {st.get('delta')} | {i['seconds']} | "
                     f"{i['protect_s_per_slice']} | "
                     f"{i['item_s_per_megavoxel']} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
