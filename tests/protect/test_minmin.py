"""The min-min loop (medue.protect.minmin): large slices go through the surrogate in passes, with the same result."""

import pytest
import torch
from torch import nn

from medue.device import make_generator
from medue.protect import base, minmin
from medue.protect.base import UnitSpace, rows_per_pass
from medue.protect.minmin import MinMinSettings, error_minimizing_delta, train_surrogate


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))


def _data(n=8, side=12):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, side, side), generator=g).float(), torch.arange(n) % 2


def test_rows_per_pass_keeps_small_batches_whole_and_splits_ct_slices():
    assert rows_per_pass((64, 1, 64, 64)) == 64 and rows_per_pass((64, 1, 256, 256)) == 64
    assert rows_per_pass((64, 1, 512, 512)) == 16 and rows_per_pass((3, 1, 4096, 4096)) == 1


@pytest.mark.parametrize("rho", [0, 2])
def test_the_noise_update_in_passes_equals_one_pass(monkeypatch, rho):
    x, y = _data()
    space = UnitSpace(0.0, 255.0, 0.0, 255.0)
    settings = MinMinSettings(epsilon=4, step=1, rho=rho)
    model = _net()
    whole = error_minimizing_delta(model, x, y, torch.zeros_like(x), space, settings=settings, steps=3,
                                   generator=make_generator(1))
    monkeypatch.setattr(base, "PIXELS_PER_PASS", 3 * 12 * 12)  # passes of 3 rows: 3 + 3 + 2
    assert rows_per_pass(x.shape) == 3
    parts = error_minimizing_delta(model, x, y, torch.zeros_like(x), space, settings=settings, steps=3,
                                   generator=make_generator(1))
    assert torch.equal(whole, parts) and float(whole.abs().max()) == 3  # three steps of one unit


def test_a_surrogate_step_in_passes_adds_up_to_the_batch_gradient(monkeypatch):
    x, y = _data()
    space = UnitSpace(0.0, 255.0, 0.0, 255.0)
    settings = MinMinSettings(epsilon=4, step=1, batch_size=8)
    trained = []
    for pixels in (None, 3 * 12 * 12):
        if pixels:
            monkeypatch.setattr(base, "PIXELS_PER_PASS", pixels)
        model = _net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        train_surrogate(model, opt, x, y, torch.zeros_like(x), space, settings=settings, steps=2,
                        generator=make_generator(2))
        trained.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(trained[0], trained[1], atol=1e-6)


def test_the_sample_wise_loop_at_large_slices_runs_in_passes(monkeypatch):
    x, y = _data(n=6, side=16)
    space = UnitSpace(0.0, 255.0, 0.0, 255.0)
    monkeypatch.setattr(base, "PIXELS_PER_PASS", 2 * 16 * 16)
    calls = []
    model = _net()
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    delta, history = minmin.bilevel_samplewise(model, x, y, space, settings=MinMinSettings(
        epsilon=4, step=1, inner_steps=2, train_steps=2, max_rounds=1, batch_size=6), generator=make_generator(0))
    assert max(calls) == 2 and len(history) == 1 and float(delta.abs().max()) <= 4
