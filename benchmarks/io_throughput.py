"""Read+write throughput of medue's verified, atomic I/O vs a plain pydicom / nibabel loop over the same files.

    python benchmarks/io_throughput.py [--series 20 --slices 32 --size 256 --nifti 20]

Makes synthetic inputs in a temp folder (medue.testing), then times, per format:
  plain:  pydicom.dcmread + save_as per slice; nibabel load + get_fdata-free raw read + save
  medue:  read_item (hashing, sorting, checks) + write_volume (derived tags, atomic write, re-read verification)
and prints MB/s and the ratio medue / plain.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from medue.io import discover_inputs, output_name, read_item, write_volume
from medue.testing import make_dicom_series, make_nifti


def _mb(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", type=int, default=10)
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--nifti", type=int, default=10)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dicom_files = []
        for s in range(args.series):
            dicom_files += make_dicom_series(root / "in_dcm" / f"s{s}", slices=args.slices, size=args.size, seed=s)
        nii_files = [make_nifti(root / "in_nii" / f"v{k}.nii", shape=(args.size, args.size, args.slices), seed=k)
                     for k in range(args.nifti)]
        rows = []
        for label, folder, files in (("dicom", root / "in_dcm", dicom_files), ("nifti", root / "in_nii", nii_files)):
            mb = _mb(files) * 2  # read + write
            t0 = time.perf_counter()
            for k, f in enumerate(files):
                out = root / f"plain_{label}" / f"{k}{''.join(f.suffixes)}"
                out.parent.mkdir(parents=True, exist_ok=True)
                if label == "dicom":
                    pydicom.dcmread(f).save_as(out)
                else:
                    img = nib.load(str(f))
                    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header), str(out))
            plain = time.perf_counter() - t0
            t0 = time.perf_counter()
            for item in discover_inputs(folder):
                vol = read_item(item, root=folder)
                write_volume(vol, root / f"medue_{label}" / output_name(vol, item.item_id), derivation="benchmark")
            ours = time.perf_counter() - t0
            rows.append((label, len(files), mb, mb / plain, mb / ours, plain / ours))
    print(f"{'format':8s} {'files':>6s} {'MB r+w':>8s} {'plain MB/s':>11s} {'medue MB/s':>11s} {'medue/plain':>12s}")
    for label, n, mb, a, b, ratio in rows:
        print(f"{label:8s} {n:6d} {mb:8.1f} {a:11.1f} {b:11.1f} {ratio:12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
