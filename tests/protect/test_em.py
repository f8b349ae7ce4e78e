"""Error-minimising noise (medue.protect.em): sample-wise and class-wise, placed on the flat region, fitted without
labels on clusters."""

import numpy as np
import pytest
import torch

from medue.device import make_generator
from medue.protect import build_protector
from medue.protect.base import UnitSpace
from medue.testing import make_volume

FAST = {"max_rounds": 1, "inner_steps": 3, "train_steps": 2}


def test_foreground_only_leaves_background():
    vol = make_volume((2, 24, 24))
    x = torch.from_numpy(vol.array.astype(np.float32)).unsqueeze(1)
    p = build_protector("em", epsilon=4, foreground_only=True, **FAST)
    p.fit(x, None, UnitSpace.for_volume(vol), generator=make_generator(0))
    out = p.protect(vol, seed=1)
    air = vol.array == vol.array.min()
    from scipy.ndimage import binary_erosion

    deep_air = binary_erosion(air, iterations=3, structure=np.ones((1, 3, 3)))
    assert np.array_equal(out.array[deep_air], vol.array[deep_air])


def test_classwise_flat_placement_is_sparse_positive_and_reproducible():
    from medue.protect.minmin import grating

    g = grating(2, 4, 4)
    assert torch.equal(g[0, 0], g[0, 0, :1].expand(4, 4))  # class 0: vertical stripes (constant down columns)
    assert torch.equal(g[1, 0], g[1, 0, :, :1].expand(4, 4))  # class 1: horizontal stripes
    rng = torch.Generator().manual_seed(0)
    x = torch.cat([torch.zeros(6, 1, 16, 8), torch.rand(6, 1, 16, 8, generator=rng) * 200 + 50], dim=-1).round()
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    space = UnitSpace(0.0, 255.0, 0.0, 255.0)
    for rounds in (0, 1):
        p = build_protector("salm-samplewise", epsilon=6, mode="classwise", placement="flat", mask_ratio=0.25, tile=4,
                            init="grating", max_rounds=rounds, train_steps=2, inner_steps=1)
        d = p.fit(x, y, space, generator=torch.Generator().manual_seed(1))
        assert d.min() >= 0 and d.max() <= 6 and torch.equal(d, d.round())
        changed = (d != 0).flatten(1).float().mean(1)
        assert (changed <= 0.25).all()
        assert (d[..., 8:] == 0).all()  # the textured half is never touched: the flat (dark) half is
        again = p.perturb(x, y, space, generator=torch.Generator().manual_seed(2))
        assert torch.equal(d, again)  # release-time application reproduces the fitted noise exactly
    with pytest.raises(ValueError, match="max_rounds"):
        build_protector("salm-samplewise", mode="samplewise", max_rounds=0)


def test_unlabelled_class_wise_release_applies_the_clusters_it_was_fitted_on():
    x = (torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 255).round()
    space = UnitSpace(0.0, 255.0, 0.0, 255.0)
    p = build_protector("salm-samplewise", mode="classwise", tile=4, placement="flat", mask_ratio=0.3, init="grating",
                        max_rounds=0)
    d = p.fit(x, None, space, generator=torch.Generator().manual_seed(0))
    assert torch.equal(d, p.perturb(x, None, space, generator=torch.Generator().manual_seed(1)))


def test_fine_band_puts_period_two_lines_on_the_flattest_pixels_of_patterned_classes_only():
    x = torch.zeros(4, 1, 16, 16)
    x[:, :, :, 8:] = torch.rand(4, 1, 16, 8, generator=torch.Generator().manual_seed(0)) * 200 + 50  # tissue half
    y = torch.tensor([0, 1, 0, 1])
    space = UnitSpace(0.0, 255.0, 0.0, 255.0)
    common = dict(epsilon=8, mode="classwise", placement="flat", init="grating", tile=4, duty=0.25, max_rounds=0,
                  blank_class=True, flat_max_level=1.0, mask_ratio=0.5)
    plain = build_protector("salm-samplewise", **common).fit(x, y, space, generator=torch.Generator().manual_seed(0))
    p = build_protector("salm-samplewise", fine_ratio=0.25, fine_tile=2, **common)
    d = p.fit(x, y, space, generator=torch.Generator().manual_seed(0))
    assert p.params()["fine_ratio"] == 0.25
    assert torch.count_nonzero(d[y == 0]) == 0  # the blank class stays blank
    assert torch.equal(d, p.perturb(x, y, space, generator=torch.Generator().manual_seed(1)))
    # the band (a quarter of the pixels, background) is half on; the rest of the region keeps the 1-in-4 lines
    changed = (d[y == 1] != 0).float().mean().item()
    assert changed > (plain[y == 1] != 0).float().mean().item()
    assert set(torch.unique(d).tolist()) <= {0.0, 8.0}
    with pytest.raises(ValueError, match="fine_ratio needs"):
        build_protector("salm-samplewise", fine_ratio=0.2, placement="pattern")
