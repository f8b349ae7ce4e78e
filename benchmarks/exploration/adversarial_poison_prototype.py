"""Prototype, in memory, used only to decide whether to build it into medue: class-targeted adversarial poisoning
(Fowl et al. 2021) under the release's budget (+-8 units on at most 16 % of the pixels, sticky saliency mask, EOT over
flip + crop), against attackers trained with the true labels. Not a release measurement: nothing here went through
`medue run`. Result (benchmarks/results/exploration/logs/adversarial_poison_prototype.log): the surrogate itself
still read 73 % of the poisoned images correctly, and ResNet-18 / DenseNet reached 0.975 / 0.973 on clean test
images, so it was not built.

    OMP_NUM_THREADS=1 python benchmarks/exploration/adversarial_poison_prototype.py THREADS RATIO STEPS
"""
import sys, time, json
import numpy as np, torch, torch.nn.functional as F
from pathlib import Path
from medue.efficacy.release import load_split, _as_uint8
from medue.efficacy.train import TrainSettings, train_classifier, _augment
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
ratio = float(sys.argv[2]) if len(sys.argv) > 2 else 0.16
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 20
root = Path("benchmarks/data/br35h_64_nifti")
info = json.loads((root/"dataset.json").read_text()); classes = info["classes"]
xa, y, _ = load_split(root, "train", classes); xt, yt, _ = load_split(root, "test", classes)
x = _as_uint8(xa, (64, 64)); xtest = _as_uint8(xt, (64, 64))
dev = torch.device("cpu")
t0 = time.time()
_, sur = train_classifier("resnet18", x, y, xtest, yt, settings=TrainSettings(epochs=10, augmentation=True), seed=123, device=dev, return_model=True)
print("surrogate trained", round(time.time()-t0), "s", flush=True)
sur.eval()
for p in sur.parameters(): p.requires_grad_(False)
X = torch.from_numpy(x.astype(np.float32)).unsqueeze(1)
Y = torch.from_numpy(y.astype(np.int64)); T = 1 - Y
gen = torch.Generator().manual_seed(0)
eps = 8.0
D = torch.zeros_like(X)
for s in range(0, len(X), 128):
    xb, tb = X[s:s+128], T[s:s+128]
    d = torch.zeros_like(xb)
    for k in range(steps):
        d.requires_grad_(True)
        inp = torch.clamp(xb + d, 0, 255) / 255.0
        # EOT: flip + crop views
        v = _augment(inp, gen)
        loss = F.cross_entropy(sur(v), tb)
        (g,) = torch.autograd.grad(loss, d)
        with torch.no_grad():
            new = d - 1.0 * torch.sign(g)
            score = new.abs() + 0.5 * g.abs() / g.abs().flatten(1).amax(1).clamp_min(1e-30).view(-1,1,1,1)
            kk = int(ratio * 64 * 64)
            idx = torch.topk(score.flatten(1), kk, dim=1).indices
            m = torch.zeros_like(new.flatten(1)).scatter_(1, idx, 1.0).view_as(new)
            new = torch.round(new * m).clamp(-eps, eps)
            d = torch.clamp(xb + new, 0, 255) - xb
    D[s:s+128] = d.detach()
xp = (X + D).squeeze(1).numpy().astype(np.uint8)
diff = (xp.astype(float) - x)
mse = (diff**2).mean(axis=(1,2)); psnr = 10*np.log10(255**2/np.maximum(mse,1e-12))
print("poison made", round(time.time()-t0), "s; PSNR min/mean", psnr.min().round(2), psnr.mean().round(2), "frac", (diff!=0).mean(axis=(1,2)).max().round(3), flush=True)
with torch.no_grad():
    acc = (sur(torch.from_numpy(xp.astype(np.float32)/255).unsqueeze(1)).argmax(1).numpy() == y).mean()
print("surrogate acc on poisoned", acc, flush=True)
for arch, aug in (("resnet18", True), ("densenet121", True), ("plain_cnn", False)):
    r = train_classifier(arch, xp, y, xtest, yt, settings=TrainSettings(epochs=10, augmentation=aug), seed=0, device=dev)
    print(arch, aug, r, flush=True)
