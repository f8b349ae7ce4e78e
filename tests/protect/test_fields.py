import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medue.device import make_generator
from medue.protect import build_protector
from medue.protect.base import UnitSpace
from medue.protect.fields import class_fields, draw_components, field_weight
from medue.protect.stand_ins import gaussian_blur, half_resolution
from medue.protector_file import load_protector, save_protector
from medue.testing import make_volume


def _phantom(n=4, size=64):
    """Bright disc (tissue, value 120) on black background, uint8 span."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 < (0.4 * size) ** 2).float()
    x = (disc * 120).expand(n, 1, size, size).clone()
    return x, disc, UnitSpace(0.0, 120.0, 0.0, 255.0)


def _fitted(seed=0, **kw):
    p = build_protector("fields", **{"epsilon": 24, "psnr_db": 32.0, "psnr_range": "dtype", **kw})
    p.fit(torch.zeros(2, 1, 1, 1), torch.tensor([0, 1]), None, generator=make_generator(seed), return_delta=False)
    return p


def _corr(a, b):
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-9))


def test_energy_sits_at_the_configured_periods_and_each_class_has_its_orientation():
    fields = class_fields(draw_components(2, count=4, periods=(0.125, 0.5), jitter_deg=10,
                                          generator=make_generator(3)), 128, 128)
    for c, along in ((0, "x"), (1, "y")):
        power = torch.fft.fft2(fields[c]).abs() ** 2
        k = torch.fft.fftfreq(128) * 128  # cycles per side
        ky, kx = torch.meshgrid(k, k, indexing="ij")
        radius = torch.sqrt(kx ** 2 + ky ** 2)
        band = (radius >= 1.5) & (radius <= 9)
        assert float(power[band].sum() / power.sum()) > 0.9  # periods of 1/8 to 1/2 of the side
        main = (kx.abs() > ky.abs()) if along == "x" else (ky.abs() > kx.abs())
        assert float(power[main].sum() / power.sum()) > 0.9  # class 0 varies along x, class 1 along y


def test_the_field_survives_what_the_habits_erase_where_fine_lines_do_not():
    x, disc, space = _phantom()
    p = _fitted()
    delta = p.perturb(x, torch.tensor([0, 1, 0, 1]), space, generator=make_generator(0))
    inside = disc.bool()
    for transform in (lambda t: gaussian_blur(t, 1.0), half_resolution):
        kept = transform(delta)
        assert _corr(kept[0, 0][inside], delta[0, 0][inside]) > 0.9
    lines = torch.zeros(1, 1, 64, 64)
    lines[..., ::3, :] = 8.0  # the default's 1-px lines every 3 px
    assert float(gaussian_blur(lines, 1.0).std()) < 0.2 * float(lines.std())


def test_budget_background_and_determinism():
    x, disc, space = _phantom()
    labels = torch.tensor([0, 1, 0, 1])
    p = _fitted(psnr_db=35.0)
    delta = p.perturb(x, labels, space, generator=make_generator(0))
    assert torch.equal(delta, torch.round(delta)) and float(delta.abs().max()) <= 24
    mse = delta.pow(2).flatten(1).mean(1)
    assert bool((10 * torch.log10(255.0 ** 2 / mse) >= 35.0 - 1e-6).all())
    assert float(delta[:, :, ~disc.bool()].abs().max()) == 0  # additive: tissue only
    assert torch.equal(delta, _fitted(psnr_db=35.0).perturb(x, labels, space, generator=make_generator(9)))
    other = _fitted(seed=1, psnr_db=35.0).perturb(x, labels, space, generator=make_generator(0))
    assert not torch.equal(delta, other)  # another key, other waves
    assert _corr(delta[0], delta[1]) < 0.3  # the classes' fields differ


def test_multiplicative_coupling_scales_with_intensity():
    w = field_weight(torch.tensor([0.0, 0.25, 1.0, 2.0]).view(1, 1, 1, 4), coupling="multiplicative",
                     tissue_level=0.08, edge=0.0)
    assert w.flatten().tolist() == [0.0, 0.25, 1.0, 1.0]
    x, disc, space = _phantom()
    x = x * torch.linspace(0.5, 1.0, 64).view(1, 1, 1, 64)  # a ramp inside the disc
    p = _fitted(coupling="multiplicative")
    delta = p.perturb(x, torch.tensor([1, 1, 1, 1]), space, generator=make_generator(0))
    assert float(delta[:, :, ~disc.bool()].abs().max()) == 0


def test_resolution_independent_same_field_at_64_and_128_px():
    comps = draw_components(2, count=3, periods=(0.125, 0.5), jitter_deg=10, generator=make_generator(5))
    big, small = class_fields(comps, 128, 128), class_fields(comps, 64, 64)
    down = F.avg_pool2d(big.unsqueeze(1), 2).squeeze(1)
    assert _corr(down[0], small[0]) > 0.99 and _corr(down[1], small[1]) > 0.99


def test_volume_protect_save_and_load(tmp_path):
    vol = make_volume((3, 32, 32), dtype="uint16")
    p = _fitted(psnr_range="slice")
    out = p.protect(vol, label=1, seed=0)
    assert out.array.dtype == np.uint16 and out.history[-1].name == "fields"
    save_protector(p, tmp_path / "p.pt")
    again = load_protector(tmp_path / "p.pt").protect(vol, label=1, seed=5)
    assert np.array_equal(again.array, out.array)  # slice-independent and seed-free: the waves are the state


def test_blank_class_and_bad_parameters():
    p = _fitted(blank_class=True)
    assert p.unchanged_label(0) and not p.unchanged_label(1)
    x, _, space = _phantom(2)
    assert float(p.perturb(x, torch.tensor([0, 0]), space, generator=make_generator(0)).abs().max()) == 0
    with pytest.raises(ValueError) as err:
        build_protector("fields", periods=[0.5, 0.1], coupling="gain", components=0, psnr_range="volume")
    for word in ("periods", "coupling", "components", "psnr_range"):
        assert word in str(err.value)
    assert math.isclose(_fitted().params()["psnr_db"], 32.0)
