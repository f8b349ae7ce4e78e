"""The differentiable stand-ins of the habits (medue.protect.stand_ins) that the fits optimise through."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import median_filter

from medue.protect.stand_ins import HABITS, attacker_habit, attacker_view, bit_depth, jpeg, median3


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


def test_the_min_min_view_flips_shifts_smooths_and_adds_noise_as_asked():
    x = torch.rand(8, 1, 12, 12)
    assert attacker_view(x, (), torch.Generator().manual_seed(0)) is x
    flipped = attacker_view(x, ("flip",), torch.Generator().manual_seed(0))
    assert all(torch.equal(f, a) or torch.equal(f, a.flip(-1)) for f, a in zip(flipped, x))
    shifted = attacker_view(x, ("shift",), torch.Generator().manual_seed(1), max_shift=2)
    assert torch.allclose(shifted.sum(dim=(-2, -1)), x.sum(dim=(-2, -1)))  # a circular shift keeps every pixel
    noisy = attacker_view(x, ("noise",), torch.Generator().manual_seed(0), noise_std=0.1)
    assert 0.05 < float((noisy - x).std()) < 0.15
    again = attacker_view(x, ("flip", "shift", "smooth"), torch.Generator().manual_seed(3))
    assert torch.equal(again, attacker_view(x, ("flip", "shift", "smooth"), torch.Generator().manual_seed(3)))
