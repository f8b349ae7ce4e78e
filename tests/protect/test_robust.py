"""SALM through the attacker's habits (medue.protect.robust, medue.protect.salm): the budgeted placement and the
protector; the habits themselves are tested in test_stand_ins.py."""

import numpy as np
import pytest
import torch

from medue.errors import ProtectionError
from medue.protect import build_protector
from medue.protect.base import UnitSpace
from medue.protect.robust import oriented_gratings, place, salient_mask
from medue.protector_file import load_protector, save_protector


def _images(n=16, side=32, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    disc = ((yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (side / 2.5) ** 2).astype(np.float32)
    x = disc[None] * rng.uniform(80, 200, (n, 1, 1)) + rng.normal(0, 12, (n, side, side)) * disc[None]
    return torch.from_numpy(np.clip(np.rint(x), 0, 255).astype(np.float32))[:, None]


def _space(x):
    return UnitSpace(0.0, 255.0, 0.0, 255.0)


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
    save_protector(a, tmp_path / "p.pt")
    again = load_protector(tmp_path / "p.pt")
    assert torch.equal(again.perturb(x, labels, space, generator=torch.Generator()), da)
    blank = build_protector("salm", blank_class=True, **params)
    d = blank.fit(x, labels, space, generator=torch.Generator().manual_seed(3))
    assert blank.unchanged_label(0) and float(d[labels == 0].abs().sum()) == 0 and float(d[labels == 1].abs().sum()) > 0
    with pytest.raises(ProtectionError, match="give the release's labels"):
        build_protector("salm", **params).fit(x, None, space, generator=torch.Generator())
    with pytest.raises(ValueError, match="period must be"):
        build_protector("salm", period=1)
