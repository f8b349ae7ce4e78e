"""SALM as the paper runs it (medue.protect.salm_samplewise): sparse, masked, sample-wise error-minimising noise."""

import pytest
import torch

from medue.device import make_generator
from medue.protect import build_protector
from medue.protect.salm_samplewise import saliency_mask_fn, salm_perturb
from medue.protect.surrogate import make_surrogate
from medue.testing import random_slices

FAST = {"max_rounds": 1, "inner_steps": 3, "train_steps": 2}


_data = random_slices


def _make(**kw):
    return build_protector("salm-samplewise", **{**FAST, **kw})


def test_salm_changes_nothing_outside_mask_and_respects_ratio():
    x, y, space = _data(n=8, size=20)
    model = make_surrogate("small", 2, seed=0, device=torch.device("cpu"))
    for ratio, update in ((0.05, "step"), (0.2, "step"), (0.05, "sticky"), (0.2, "sticky")):
        delta = salm_perturb(model, x, y, space, epsilon=8, steps=5, mask_ratio=ratio, mask_update=update,
                             generator=make_generator(0))
        k = int(ratio * 20 * 20)
        nonzero = (delta != 0).reshape(8, -1).sum(1)
        assert int(nonzero.max()) <= k and int(nonzero.min()) > 0
        allowed = torch.zeros_like(x)
        allowed[..., :10, :] = 1
        masked = salm_perturb(model, x, y, space, epsilon=8, steps=5, mask_ratio=ratio, mask_update=update,
                              generator=make_generator(0), allowed=allowed)
        assert float(masked[..., 10:, :].abs().sum()) == 0


def test_sticky_mask_lets_noise_reach_the_budget():
    x, y, space = _data(n=8, size=20)
    model = make_surrogate("small", 2, seed=0, device=torch.device("cpu"))
    kw = dict(epsilon=4, steps=8, mask_ratio=0.1, generator=make_generator(0))
    sticky = salm_perturb(model, x, y, space, mask_update="sticky", **kw)
    step = salm_perturb(model, x, y, space, mask_update="step", **kw)
    # kept pixels accumulate: the sticky delta is larger on its support than the re-ranked one
    assert float(sticky.abs().sum()) > float(step.abs().sum())
    assert int(sticky.abs().max()) == 4
    with pytest.raises(ValueError, match="mask_update must be one of"):
        _make(mask_update="always")


def test_salm_fit_is_sparse():
    x, y, space = _data(n=16, size=16)
    delta = _make(epsilon=8, mask_ratio=0.1).fit(x, y, space, generator=make_generator(0))
    assert int((delta != 0).reshape(16, -1).sum(1).max()) <= int(0.1 * 256)


def test_the_mask_keeps_the_top_ratio_and_refuses_what_it_cannot_do():
    grad = torch.arange(16.0).view(1, 1, 4, 4)
    mask = saliency_mask_fn(0.25, "step")(grad, grad, torch.zeros_like(grad))
    assert mask.sum() == 4 and bool(mask.view(-1)[-4:].all())  # the four largest gradients
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\]"):
        saliency_mask_fn(0.0)
    with pytest.raises(ValueError, match="mask_update must be one of"):
        saliency_mask_fn(0.1, "always")
    p = _make()
    assert p.params()["mode"] == "samplewise" and p.support_ratio == 0.1 and p.streams_fit
