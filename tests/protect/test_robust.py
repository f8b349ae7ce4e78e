"""SALM through the attacker's habits: the differentiable habits, the budgeted placement, and the protector."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import median_filter

from medue.errors import ProtectionError
from medue.protect import build_protector, load_protector
from medue.protect.base import UnitSpace
from medue.protect.habits import HABITS, attacker_habit, bit_depth, jpeg, median3
from medue.protect.robust import oriented_gratings, place, salient_mask


def _images(n=16, side=32, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    disc = ((yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (side / 2.5) ** 2).astype(np.float32)
    x = disc[None] * rng.uniform(80, 200, (n, 1, 1)) + rng.normal(0, 12, (n, side, side)) * disc[None]
    return torch.from_numpy(np.clip(np.rint(x), 0, 255).astype(np.float32))[:, None]


def _space(x):
    return UnitSpace(0.0, 255.0, 0.0, 255.0)


@pytest.mark.parametrize("habit", HABITS)
def test_every_habit_keeps_the_shape_and_passes_a_gradient(habit):
    x = torch.rand(2, 1, 24, 24, requires_grad=True)
    out = attacker_habit(x, torch.Generator().manual_seed(0), habits=(habit,))
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_jpeg_median_and_bit_depth_match_the_real_operations():
    img = (np.random.default_rng(1).random((32, 32)) * 60 + 100).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=10)
    real = np.asarray(Image.open(io.BytesIO(buf.getvalue()))).astype(float)
    ours = jpeg(torch.tensor(img / 255.0, dtype=torch.float32)[None, None], 10)[0, 0].numpy() * 255
    assert np.abs(real - ours).mean() < 1.0 < np.abs(real - img).mean()  # PIL's JPEG, not the input
    x = torch.rand(1, 1, 16, 16)
    assert torch.allclose(median3(x)[0, 0], torch.from_numpy(median_filter(x[0, 0].numpy(), 3, mode="mirror")))
    assert set(torch.unique(bit_depth(x, 3) * 7).round().tolist()) <= set(range(8))


def test_placement_keeps_whole_units_the_budget_and_each_slice_psnr():
    x = _images()
    labels = torch.arange(16) % 2
    space = _space(x)
    tiles = oriented_gratings(2, 6) * 8
    mask = salient_mask(space.to_model(x), 0.4)
    d = place(tiles, labels, mask, x, space, epsilon=8, psnr_db=38.5)
    assert torch.equal(d, d.round()) and float(d.abs().max()) <= 8
    assert float((d.ne(0) & mask.eq(0)).sum()) == 0  # only on the salient mask
    span = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    psnr = 10 * torch.log10(span**2 / d.pow(2).flatten(1).mean(1))
    assert float(psnr.min()) >= 38.5
    assert bool((d[labels == 0] != 0).any()) and bool((d[labels == 1] != 0).any())  # every class changed


def test_salm_fits_a_pattern_per_class_deterministically_and_round_trips(tmp_path):
    x = _images()
    labels = torch.arange(16) % 2
    space = _space(x)
    params = {"epsilon": 8, "rounds": 1, "train_steps": 2, "noise_steps": 2, "batch_size": 8}
    a = build_protector("salm", **params)
    da = a.fit(x, labels, space, generator=torch.Generator().manual_seed(3))
    db = build_protector("salm", **params).fit(x, labels, space, generator=torch.Generator().manual_seed(3))
    assert torch.equal(da, db)
    assert all(float(a.tiles[c].abs().sum()) > 0 for c in range(2)) and not a.unchanged_label(0)
    a.save(tmp_path / "p.pt")
    again = load_protector(tmp_path / "p.pt")
    assert torch.equal(again.perturb(x, labels, space, generator=torch.Generator()), da)
    blank = build_protector("salm", blank_class=True, **params)
    d = blank.fit(x, labels, space, generator=torch.Generator().manual_seed(3))
    assert blank.unchanged_label(0) and float(d[labels == 0].abs().sum()) == 0 and float(d[labels == 1].abs().sum()) > 0
    with pytest.raises(ProtectionError, match="give the release's labels"):
        build_protector("salm", **params).fit(x, None, space, generator=torch.Generator())
    with pytest.raises(ValueError, match="period must be"):
        build_protector("salm", period=1)
