"""What an attacker applies to released images before training (medue.efficacy.countermeasures)."""

import numpy as np

from medue.efficacy import countermeasures as cm
from medue.habits import PURIFICATIONS


def test_countermeasures_change_images_as_expected():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 16, 16)).astype(np.uint8)
    assert len(np.unique(cm.bit_depth(x, bits=3))) <= 8
    assert cm.median(x).shape == x.shape and not np.array_equal(cm.median(x), x)
    assert cm.jpeg(x, quality=10).dtype == np.uint8 and not np.array_equal(cm.jpeg(x), x)


def test_the_informed_attackers_filters_take_out_a_low_frequency_field():
    yy, xx = np.mgrid[:64, :64]
    head = ((yy - 32) ** 2 + (xx - 32) ** 2 < 25 ** 2) * 100.0
    field = 12 * np.sin(2 * np.pi * 4 * xx / 64) * (head > 0)  # the fields carrier: 4 cycles per side
    with_field, without = (np.clip(a, 0, 255).astype(np.uint8)[None] for a in (head + field, head))
    inside = head > 0
    for name, most in (("band_stop", 0.3), ("high_pass", 0.2), ("detrend", 0.8)):
        f = cm.PREPROCESSING[name]
        left = f(with_field).astype(float)[0] - f(without).astype(float)[0]
        assert np.sqrt((left[inside] ** 2).mean()) < most * np.sqrt((field[inside] ** 2).mean()), name
        assert f(with_field).dtype == np.uint8 and f(with_field).shape == with_field.shape


def test_every_purification_of_the_vocabulary_keeps_uint8_images_and_their_shape():
    x = np.random.default_rng(1).integers(0, 256, (2, 16, 16)).astype(np.uint8)
    assert set(cm.PREPROCESSING) == set(PURIFICATIONS)
    for name in PURIFICATIONS:
        out = cm.PREPROCESSING[name](x)
        assert out.dtype == np.uint8 and out.shape == x.shape, name
