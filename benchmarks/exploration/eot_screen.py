"""Screen class-wise patterns fitted through the attacker's habits (medue.protect.robust), in memory (issue #26).

Not release evidence: the deltas are computed here with the same pure functions the protector uses, not written by
`medue run`. A candidate that screens well is measured with `medue evaluate` on release files.

Candidate syntax: ``name:period:ratio:psnr:rounds[:region[:blank|all[:epsilon]]]`` (name ``blobs``: a lattice of
period//2-px blobs, placed; otherwise rounds 0: the oriented gratings, unrefined;
region tissue, background or any; blank: the first class carries no pattern), ``lines`` (today's default,
pipelines/default.yaml) or ``clean``.

    OMP_NUM_THREADS=1 python benchmarks/exploration/eot_screen.py --out s.jsonl --candidates clean grating:8:0.5:38.5:0
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
from medue.protect.base import UnitSpace
from medue.protect.masks import flat_region_mask
from medue.protect.robust import fit_tiles, place, salient_mask

ATTACKS = {
    "r18_plain": dict(recipe="none"),
    "r18_flip_crop": dict(recipe="flip_crop"),
    "r18_monai_tutorial": dict(recipe="monai_tutorial"),
    "r18_half_resolution": dict(recipe="flip_crop", scale=0.5),
    "r18_mix10": dict(recipe="flip_crop", mix=0.1),
    "r18_jpeg_q10": dict(recipe="flip_crop", purification="jpeg_q10"),
    "r18_median_3x3": dict(recipe="flip_crop", purification="median_3x3"),
    "r18_gaussian_blur": dict(recipe="flip_crop", purification="gaussian_blur_1"),
    "r18_bit_depth_3": dict(recipe="flip_crop", purification="bit_depth_3"),
    "r18_adversarial": dict(recipe="flip_crop", adversarial=2 / 255),
}



def blob_lattice(num_classes: int, period: int, blob: int, *, blank: int | None = 0) -> torch.Tensor:
    """``(num_classes, period, period)`` tiles: a ``blob`` x ``blob`` square of ones per tile (a lattice of blobs
    once tiled), the blob at a different place of the tile for each class, none for the ``blank`` class.

    Isotropic blobs keep their shape under flips, rotations and zooms; a blob of 3 px keeps its centre through a
    3x3 median and most of its height through a Gaussian of sigma 1 and area resampling by 2.
    """
    tiles = torch.zeros(num_classes, period, period)
    spots = [(r, c) for r in range(0, period - blob + 1, max(1, blob)) for c in range(0, period - blob + 1, max(1, blob))]
    k = 0
    for cls in range(num_classes):
        if cls == blank:
            continue
        r, c = spots[k % len(spots)]
        tiles[cls, r:r + blob, c:c + blob] = 1.0
        k += 1
    return tiles

def spaces_for(x: np.ndarray) -> UnitSpace:
    lo = np.percentile(x.reshape(len(x), -1), 0.5, axis=1)
    hi = np.percentile(x.reshape(len(x), -1), 99.5, axis=1)
    return UnitSpace(torch.tensor(lo, dtype=torch.float32).view(-1, 1, 1, 1),
                     torch.tensor(np.maximum(hi - lo, 1.0), dtype=torch.float32).view(-1, 1, 1, 1), 0.0, 255.0)


def region_mask(x_model: torch.Tensor, ratio: float, region: str) -> torch.Tensor:
    if region == "tissue":
        return salient_mask(x_model, ratio)
    if region == "background":
        return flat_region_mask(x_model, ratio, max_level=None)
    if region == "any":
        return torch.ones_like(x_model)
    raise ValueError(region)


def protect_lines(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[float], float]:
    """Today's default (pipelines/default.yaml): the placed line pattern, first class blank."""
    import yaml

    from medue.protect import build_protector

    params = yaml.safe_load(open(Path(__file__).parents[2] / "pipelines" / "default.yaml"))["protect"]["params"]
    protector = build_protector("salm", **params)
    xu = torch.from_numpy(x.astype(np.float32))[:, None]
    d = protector.fit(xu, torch.from_numpy(y.astype(np.int64)), spaces_for(x),
                      generator=torch.Generator().manual_seed(seed))
    return (xu + d)[:, 0].numpy().astype(np.uint8), [], 0.0


def protect(x: np.ndarray, y: np.ndarray, *, period: int, ratio: float, psnr: float, rounds: int, eps: int = 8,
            seed: int = 0, region: str = "tissue", blank: bool = False, kind: str = "eot"
            ) -> tuple[np.ndarray, list[float], float]:
    xu = torch.from_numpy(x.astype(np.float32))[:, None]
    space = spaces_for(x)
    mask = region_mask(space.to_model(xu), ratio, region)
    labels = torch.from_numpy(y.astype(np.int64))
    t = time.perf_counter()
    if kind == "blobs":  # a lattice of period//2 px blobs, positive, placed (no fit)
        tiles = blob_lattice(int(labels.max()) + 1, period, max(1, period // 2), blank=0 if blank else None) * eps
        d = place(tiles, labels, mask, xu, space, epsilon=eps, psnr_db=psnr)
        return (xu + d)[:, 0].numpy().astype(np.uint8), [], 0.0
    tiles, hist = fit_tiles(xu, labels, space, mask, epsilon=eps, period=period, psnr_db=psnr, rounds=rounds,
                            train_steps=10, noise_steps=10, batch_size=64, lr=0.05, step=1.0, seed=seed,
                            blank=0 if blank else None,
                            generator=torch.Generator().manual_seed(seed),
                            progress=lambda s: print(s, flush=True))
    fit_s = time.perf_counter() - t
    d = place(tiles, labels, mask, xu, space, epsilon=eps, psnr_db=psnr)
    return (xu + d)[:, 0].numpy().astype(np.uint8), hist, fit_s


def attack(name: str, x, y, xt, yt, pool, ypool, epochs: int, seed: int) -> dict:
    a = ATTACKS[name]
    if a.get("mix"):
        n = int(round(a["mix"] * len(x)))
        pick = np.random.default_rng(seed).choice(len(pool), n, replace=False)
        x, y = np.concatenate([x, pool[pick]]), np.concatenate([y, ypool[pick]])
    x = countermeasures.PREPROCESSING.get(a.get("purification", "none"), lambda v: v)(x)
    if a.get("scale", 1.0) != 1.0:
        x, xt = resample(x, a["scale"]), resample(xt, a["scale"])
    settings = TrainSettings(epochs=epochs, recipe=a["recipe"], adversarial_epsilon=a.get("adversarial", 0.0))
    res = train_classifier("resnet18", x, y, xt, yt, settings=settings, seed=seed, device=torch.device("cpu"))
    return {k: round(v, 4) for k, v in res.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=Path("benchmarks/data/br35h_64_nifti"))
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    p.add_argument("--candidates", nargs="+", default=["grating:8:0.4:38.5:0", "eot:8:0.4:38.5:8"])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    classes = json.loads((args.dataset / "dataset.json").read_text())["classes"]
    arrays, y_all, _ = load_split(args.dataset, "train", classes)
    x_all = _as_uint8(arrays, (64, 64))
    keep = np.concatenate([np.flatnonzero(y_all == c)[:args.per_class] for c in range(len(classes))])
    rest = np.setdiff1d(np.arange(len(y_all)), keep)
    x, y, pool, ypool = x_all[keep], y_all[keep], x_all[rest], y_all[rest]
    tarr, yt, _ = load_split(args.dataset, "test", classes)
    xt = _as_uint8(tarr, (64, 64))
    for cand in args.candidates:
        if cand == "clean":
            xp, info = x, {}
        else:
            if cand == "lines":
                xp, hist, fit_s = protect_lines(x, y, seed=args.seed)
            else:
                name, period, ratio, psnr, rounds, *rest = cand.split(":")
                xp, hist, fit_s = protect(x, y, period=int(period), ratio=float(ratio), psnr=float(psnr),
                                          rounds=int(rounds), seed=args.seed, region=rest[0] if rest else "tissue",
                                          blank=len(rest) > 1 and rest[1] == "blank",
                                          eps=int(rest[2]) if len(rest) > 2 else 8, kind=name)
            ps = [peak_signal_noise_ratio(a, b, data_range=max(int(a.max()) - int(a.min()), 1)) for a, b in zip(x, xp)]
            ss = [structural_similarity(a, b, data_range=max(int(a.max()) - int(a.min()), 1)) for a, b in zip(x, xp)]
            info = {"psnr_min": round(float(np.min(ps)), 2), "ssim_min": round(float(np.min(ss)), 4),
                    "ssim_p05": round(float(np.percentile(ss, 5)), 4), "ssim_below_095": float(np.mean(np.array(ss) < 0.95)),
                    "changed_mean": round(float((xp != x).mean()), 4),
                    "max_abs": int(np.abs(xp.astype(int) - x).max()), "fit_history": hist, "fit_s": round(fit_s, 1)}
            print(json.dumps({"candidate": cand, **info}), flush=True)
        for name in args.attacks:
            t = time.perf_counter()
            res = attack(name, xp, y, xt, yt, pool, ypool, args.epochs, seed=args.seed)
            line = {"candidate": cand, "attack": name, **res, **info, "seconds": round(time.perf_counter() - t, 1)}
            print(json.dumps(line), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
