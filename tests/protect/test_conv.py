"""The convolution-based CUDA (medue.protect.conv): class-wise filters, unbounded as published."""

import pytest
import torch

from medue.device import make_generator
from medue.protect import build_protector
from medue.testing import random_slices as _data


def test_conv_follows_the_paper_unbounded_and_clips_only_when_asked():
    x, y, space = _data(n=8)
    p = build_protector("conv", epsilon=8)
    d = p.fit(x, y, space, generator=make_generator(0))
    w = p.filters
    assert w.shape == (2, 1, 3, 3) and bool(((w == 1.0).sum(dim=(1, 2, 3)) == 1).all())  # one peak weight of 1
    assert float(w[w < 1].max()) <= 0.3
    assert float(d.abs().max()) > 8  # a blur, not a small noise: the paper has no norm bound
    assert float((x + d).max(dim=-1).values.max(dim=-1).values.min()) >= 0
    # each image keeps the top of its own range (the paper's img / img.max())
    assert torch.allclose((x + d).amax(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3)))
    clipped = build_protector("conv", epsilon=8, clip=True)
    dc = clipped.fit(x, y, space, generator=make_generator(0))
    assert float(dc.abs().max()) <= 8 and clipped.params()["clip"] is True
    with pytest.raises(ValueError, match="clip must be"):
        build_protector("conv", clip="yes")
