"""Diagnostic, in memory and **not a release measurement**: do attackers learn the anatomy from the tumour images
whose class pattern the fidelity gate weakened?

Reads a release that ``medue run`` wrote of a benchmark set's training split (a ``medue evaluate --work`` folder),
finds the images of the patterned class whose largest change is below the budget (the gate scaled them down), and
trains each attacker twice with the evaluation's own training code and seeds: on every released image, and without
the weakened ones. Prints one JSON line per run: training and clean-test accuracy, the test images of the patterned
class read as that class, and how the model reads the weakened images.

    python benchmarks/exploration/weak_items_diagnostic.py --release /tmp/work --runs densenet121:0 resnet18:2

Session 8's output is ``benchmarks/results/exploration/logs/s8_weak_items_diagnostic.log``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medue.device import derive_seed
from medue.efficacy.release import _as_uint8, load_split, read_labels_table, read_release
from medue.efficacy.train import TrainSettings, predict, train_classifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, default=Path("benchmarks/data/br35h_64_nifti"))
    ap.add_argument("--release", type=Path, required=True, help="output folder of the release (medue run)")
    ap.add_argument("--runs", nargs="+", default=["densenet121:0", "resnet18:2"], metavar="ARCH:SEED")
    ap.add_argument("--budget", type=int, default=8, help="the release's epsilon (stored units)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    root = args.dataset
    size = tuple(json.loads((root / "dataset.json").read_text())["image_size"])
    table = read_labels_table(root / "train_labels.csv")
    classes = sorted(set(table.values()))
    released, _, _ = read_release(args.release, root / "train", table, classes)
    clean, y, rels = load_split(root, "train", classes)
    test, y_test, _ = load_split(root, "test", classes)
    x_test, x_clean = _as_uint8(test, size), _as_uint8(clean, size)
    x = _as_uint8([released[r] for r in rels], size)  # every item must have been exported
    amp = np.abs(x.astype(int) - x_clean.astype(int)).reshape(len(x), -1).max(1)
    patterned = int(np.bincount(y[amp > 0]).argmax())
    weak = (y == patterned) & (amp < args.budget)
    print(json.dumps({"patterned_class": classes[patterned], "weakened_images": int(weak.sum()),
                      "of": int((y == patterned).sum())}), flush=True)
    for run in args.runs:
        arch, seed = run.split(":")
        for subset in ("all", "without_weakened"):
            keep = ~weak if subset != "all" else np.ones(len(y), bool)
            t = time.time()
            res, model = train_classifier(arch, x[keep], y[keep], x_test, y_test,
                                          settings=TrainSettings(epochs=args.epochs, augmentation=True),
                                          seed=derive_seed(int(seed), arch, "none"), device=device, return_model=True)
            p_test = predict(model, x_test, device)
            p_weak = predict(model, x[weak], device) if weak.any() else np.array([])
            print(json.dumps({
                "arch": arch, "seed": int(seed), "training_set": subset, "n": int(keep.sum()),
                "train": round(res["train_accuracy"], 4), "test": round(res["test_accuracy"], 4),
                "test_patterned_class_recall": round(float((p_test[y_test == patterned] == patterned).mean()), 4),
                "weakened_read_as_patterned_class": (round(float((p_weak == patterned).mean()), 4)
                                                     if weak.any() else None),
                "seconds": round(time.time() - t)}), flush=True)


if __name__ == "__main__":
    main()
