"""Prototype, in memory, used only to decide whether to build it into medue (not a release measurement: nothing
here went through `medue run`). Class-targeted adversarial poisoning (Fowl et al. 2021) under the release's budget
(+-8 units on at most RATIO of the pixels) with a stronger optimiser than the first prototype: an ensemble of
surrogates trained on the clean images, a dense warm-up that picks the support, then continuous PGD on that support
with EOT over flip + crop, rounded to whole units at the end. Prints the surrogates' accuracy on the poisons, the
fidelity, and ResNet-18 / DenseNet / plain CNN trained on the poisons with the true labels, tested on clean images.

    python benchmarks/exploration/adversarial_poison_v2.py --size 64 --ratio 0.16 --steps 100 --device cuda
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medue.efficacy.release import _as_uint8, load_split
from medue.efficacy.train import TrainSettings, train_classifier

p = argparse.ArgumentParser()
p.add_argument("--size", type=int, default=64)
p.add_argument("--ratio", type=float, default=0.16)
p.add_argument("--steps", type=int, default=100)
p.add_argument("--eps", type=float, default=8.0)
p.add_argument("--surrogates", nargs="+", default=["resnet18", "densenet121"])
p.add_argument("--target", default="flip", choices=["flip", "blank"])
p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
p.add_argument("--epochs", type=int, default=10)
p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
p.add_argument("--out", type=Path, default=None)
p.add_argument("--limit", type=int, default=0, help="first N train images only (smoke test)")
a = p.parse_args()
dev = torch.device(a.device)
root = Path(f"benchmarks/data/br35h_{a.size}_nifti")
classes = json.loads((root / "dataset.json").read_text())["classes"]
xa, y, _ = load_split(root, "train", classes)
xt, yt, _ = load_split(root, "test", classes)
x = _as_uint8(xa, (a.size, a.size))
xtest = _as_uint8(xt, (a.size, a.size))
if a.limit:
    x, y = x[:a.limit], y[:a.limit]
t0 = time.time()
log = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}, "rows": []}


def say(*m):
    print(f"[{time.time() - t0:7.1f}s]", *m, flush=True)


surs = []
for k, arch in enumerate(a.surrogates):
    r, m = train_classifier(arch, x, y, xtest, yt, settings=TrainSettings(epochs=a.epochs, augmentation=True),
                            seed=100 + k, device=dev, return_model=True)
    m.eval()
    for q in m.parameters():
        q.requires_grad_(False)
    surs.append(m)
    say("surrogate", arch, r)

X = torch.from_numpy(x.astype(np.float32)).unsqueeze(1)
Y = torch.from_numpy(y.astype(np.int64))
T = 1 - Y
gen = torch.Generator().manual_seed(0)
kk = int(a.ratio * a.size * a.size)
D = torch.zeros_like(X)


def aug(x):
    """Random flip and 4-px reflect-padded crop (as the attackers'), on x's device."""
    n, _, h, w = x.shape
    x = torch.where((torch.rand(n, device=x.device) < 0.5)[:, None, None, None], x.flip(-1), x)
    dy, dx = torch.randint(0, 9, (2,)).tolist()
    return F.pad(x, (4, 4, 4, 4), mode="reflect")[:, :, dy:dy + h, dx:dx + w]


def loss_of(xb, d, tb):
    inp = torch.clamp(xb + d, 0, 255) / 255.0
    views = torch.cat([inp, aug(inp), aug(inp)])
    tt = tb.repeat(3)
    return sum(F.cross_entropy(s(views), tt) for s in surs) / len(surs)


bs = 256
for s0 in range(0, len(X), bs):
    xb, tb = X[s0:s0 + bs].to(dev), T[s0:s0 + bs].to(dev)
    if a.target == "blank":
        tb = torch.zeros_like(tb)
    d = torch.zeros_like(xb)
    acc = torch.zeros_like(xb)
    for k in range(10):  # dense warm-up: where does the gradient want to move?
        d.requires_grad_(True)
        (g,) = torch.autograd.grad(loss_of(xb, d, tb), d)
        acc += g.abs()
        d = (d.detach() - 1.0 * g.sign()).clamp(-a.eps, a.eps)
    idx = torch.topk((d.abs() * acc).flatten(1), kk, dim=1).indices
    mask = torch.zeros_like(xb.flatten(1)).scatter_(1, idx, 1.0).view_as(xb)
    d = (d * mask).detach()
    for k in range(a.steps):
        alpha = 2.0 * (1 - k / a.steps) + 0.25
        d.requires_grad_(True)
        (g,) = torch.autograd.grad(loss_of(xb, d, tb), d)
        d = ((d.detach() - alpha * g.sign()) * mask).clamp(-a.eps, a.eps)
        d = torch.clamp(xb + d, 0, 255) - xb
    d = torch.round(d)
    D[s0:s0 + bs] = d.cpu()
say("poisons made")
xp = (X + D).squeeze(1).numpy().astype(np.uint8)
diff = xp.astype(float) - x
mse = (diff ** 2).mean(axis=(1, 2))
psnr = 10 * np.log10(255 ** 2 / np.maximum(mse, 1e-12))
from skimage.metrics import structural_similarity as ssim  # noqa: E402

ss = np.array([ssim(x[i], xp[i], data_range=255) for i in range(len(x))])
fid = {"psnr_min": float(psnr.min()), "psnr_mean": float(psnr.mean()), "ssim_min": float(ss.min()),
       "ssim_mean": float(ss.mean()), "ssim_below_095": int((ss < 0.95).sum()), "psnr_below_38": int((psnr < 38).sum()),
       "frac_max": float((diff != 0).mean(axis=(1, 2)).max()), "absmax": float(np.abs(diff).max())}
say("fidelity", fid)
log["fidelity"] = fid
with torch.no_grad():
    for arch, s in zip(a.surrogates, surs):
        pr = torch.cat([s(torch.from_numpy(xp[i:i + 512].astype(np.float32) / 255).unsqueeze(1).to(dev)).argmax(1).cpu()
                        for i in range(0, len(xp), 512)]).numpy()
        log[f"surrogate_{arch}_acc_on_poisons"] = float((pr == y).mean())
        say("surrogate", arch, "reads poisons correctly", float((pr == y).mean()))
for arch, aug in (("resnet18", True), ("densenet121", True), ("plain_cnn", False)):
    for seed in a.seeds:
        r = train_classifier(arch, xp, y, xtest, yt, settings=TrainSettings(epochs=a.epochs, augmentation=aug),
                             seed=seed, device=dev)
        say(arch, aug, seed, r)
        log["rows"].append({"arch": arch, "aug": aug, "seed": seed, **r})
for cm, kw in (("adv_2_255", {"adversarial_epsilon": 2 / 255}),):
    r = train_classifier("resnet18", xp, y, xtest, yt,
                         settings=TrainSettings(epochs=a.epochs, augmentation=True, **kw), seed=0, device=dev)
    say("resnet18", cm, r)
    log["rows"].append({"arch": "resnet18", "countermeasure": cm, "seed": 0, **r})
if a.out:
    a.out.write_text(json.dumps(log, indent=1))
