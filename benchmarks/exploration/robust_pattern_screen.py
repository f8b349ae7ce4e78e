"""Screen candidate class-wise patterns against the suite's habits, in memory (issue #26, exploration only).

Not release evidence: the patterns are added here in numpy, not written by `medue run`. A candidate that screens
well becomes a protector and is measured with `medue evaluate` on release files.

    OMP_NUM_THREADS=1 python benchmarks/exploration/robust_pattern_screen.py --per-class 300 --out s.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medue.efficacy import countermeasures
from medue.efficacy.release import _as_uint8, load_split, resample
from medue.efficacy.train import TrainSettings, train_classifier


def tissue_rank(x: np.ndarray) -> np.ndarray:
    """Per-pixel significance: local mean intensity (tissue before background), ties broken by position."""
    from scipy.ndimage import uniform_filter

    return uniform_filter(x.astype(np.float32), size=5)


def pattern(kind: str, label: int, side: int, period: float, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi) if not kind.endswith("f") else 0.7 * (label + 1)  # "...f": fixed phase
    theta = (0.0, np.pi / 2, np.pi / 4, 3 * np.pi / 4)[label]
    u = np.cos(theta) * xx + np.sin(theta) * yy
    wave = np.sin(2 * np.pi * u / period + phase)
    if kind.startswith("square"):
        wave = np.sign(wave)
    return wave


def protect(x: np.ndarray, y: np.ndarray, *, kind: str, period: float, eps: int, coverage: float,
            seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty_like(x)
    for i, (img, lab) in enumerate(zip(x, y)):
        w = pattern(kind, int(lab), img.shape[-1], period, rng)
        d = np.rint(eps * w)
        rank = tissue_rank(img)
        k = int(coverage * img.size)
        mask = np.zeros(img.size, bool)
        mask[np.argsort(-rank.ravel())[:k]] = True
        d = d * mask.reshape(img.shape)
        # the fidelity budget: lower the largest changes until PSNR >= 38 dB and SSIM >= 0.95 (8-bit span)
        p = np.clip(img.astype(int) + d, 0, 255)
        while (peak_signal_noise_ratio(img, p.astype(np.uint8), data_range=255) < 38.0
               or structural_similarity(img, p.astype(np.uint8), data_range=255) < 0.95):
            d = np.where(np.abs(d) >= np.abs(d).max(), np.sign(d) * (np.abs(d) - 1), d)
            p = np.clip(img.astype(int) + d, 0, 255)
        out[i] = p.astype(np.uint8)
    return out


ATTACKS = {
    "r18_flip_crop": dict(recipe="flip_crop"),
    "r18_monai_tutorial": dict(recipe="monai_tutorial"),
    "r18_half_resolution": dict(recipe="flip_crop", scale=0.5),
    "r18_jpeg_q10": dict(recipe="flip_crop", purification="jpeg_q10"),
    "r18_median_3x3": dict(recipe="flip_crop", purification="median_3x3"),
    "r18_gaussian_blur": dict(recipe="flip_crop", purification="gaussian_blur_1"),
    "r18_bit_depth_3": dict(recipe="flip_crop", purification="bit_depth_3"),
}


def attack(name: str, x, y, xt, yt, epochs: int, seed: int) -> dict:
    a = ATTACKS[name]
    x = countermeasures.PREPROCESSING.get(a.get("purification", "none"), lambda v: v)(x)
    if a.get("scale", 1.0) != 1.0:
        x, xt = resample(x, a["scale"]), resample(xt, a["scale"])
    res = train_classifier("resnet18", x, y, xt, yt, settings=TrainSettings(epochs=epochs, recipe=a["recipe"]),
                           seed=seed, device=torch.device("cpu"))
    return {k: round(v, 4) for k, v in res.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=Path("benchmarks/data/br35h_64_nifti"))
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    p.add_argument("--candidates", nargs="+", default=["clean", "sine:8:8:0.35", "square:8:8:0.16",
                                                         "sine:6:8:0.35", "sine:12:8:0.35"],
                   help="kind:period:eps:coverage, or clean")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    classes = json.loads((args.dataset / "dataset.json").read_text())["classes"]
    arrays, y, _ = load_split(args.dataset, "train", classes)
    x = _as_uint8(arrays, (64, 64))
    keep = np.concatenate([np.flatnonzero(y == c)[:args.per_class] for c in range(len(classes))])
    x, y = x[keep], y[keep]
    tarr, yt, _ = load_split(args.dataset, "test", classes)
    xt = _as_uint8(tarr, (64, 64))
    for cand in args.candidates:
        if cand == "clean":
            xp, fid = x, {}
        else:
            kind, period, eps, cov = cand.split(":")
            xp = protect(x, y, kind=kind, period=float(period), eps=int(eps), coverage=float(cov), seed=0)
            psnr = [peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(x, xp)]
            ssim = [structural_similarity(a, b, data_range=255) for a, b in zip(x, xp)]
            fid = {"psnr_min": round(float(np.min(psnr)), 2), "ssim_min": round(float(np.min(ssim)), 4),
                   "changed_mean": round(float((xp != x).mean()), 4),
                   "max_abs": int(np.abs(xp.astype(int) - x).max())}
        for name in args.attacks:
            t = time.perf_counter()
            res = attack(name, xp, y, xt, yt, args.epochs, seed=0)
            line = {"candidate": cand, "attack": name, **res, **fid, "seconds": round(time.perf_counter() - t, 1)}
            print(json.dumps(line), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
