"""Diagnostic (in memory, not a release measurement): does the leak come from the tumour images whose pattern the
gate weakened? Train on the release files as they are, then without the weak tumour images."""
import sys, json, time, numpy as np, torch
from pathlib import Path
from medue.efficacy.release import read_release, read_labels_table, load_split, _as_uint8
from medue.efficacy.train import TrainSettings, train_classifier, predict
from medue.device import derive_seed
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
root = Path('/work/main/benchmarks/data/br35h_64_nifti')
out = Path(sys.argv[1]); runs = sys.argv[2].split(',')
table = read_labels_table(root / 'train_labels.csv'); classes = sorted(set(table.values()))
rel, exp, status = read_release(out, root / 'train', table, classes)
clean, ys, rels = load_split(root, 'train', classes)
test, yt, _ = load_split(root, 'test', classes)
x_test = _as_uint8(test, (64, 64)); x_clean = _as_uint8(clean, (64, 64))
x = _as_uint8([rel[r] for r in rels], (64, 64)); y = ys
amp = np.abs(x.astype(int) - x_clean.astype(int)).reshape(len(x), -1).max(1)
weak = (y == 1) & (amp < 8)
print('weak tumour images', weak.sum(), flush=True)
for run in runs:
    arch, seed, subset = run.split(':')
    keep = ~weak if subset == 'strong' else np.ones(len(y), bool)
    ts = TrainSettings(epochs=10, width=16, augmentation=True)
    t = time.time()
    res, model = train_classifier(arch, x[keep], y[keep], x_test, yt, settings=ts, seed=derive_seed(int(seed), arch, 'none'),
                                  device=torch.device('cpu'), return_model=True)
    p_orig = predict(model, x_clean, torch.device('cpu'))
    p_weak = predict(model, x[weak], torch.device('cpu'))
    out_row = dict(run=run, n=int(keep.sum()), train=round(res['train_accuracy'], 4), test=round(res['test_accuracy'], 4),
                   test_tumour_recall=round(float((predict(model, x_test, torch.device('cpu'))[yt == 1] == 1).mean()), 4),
                   clean_originals_tumour_read_as_tumour=round(float((p_orig[y == 1] == 1).mean()), 4),
                   weak_released_read_as_tumour=round(float((p_weak == 1).mean()), 4), seconds=round(time.time() - t))
    print(json.dumps(out_row), flush=True)
