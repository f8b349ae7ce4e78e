import numpy as np
import pytest
import torch

from medue.device import make_generator
from medue.errors import ProtectionError
from medue.protect import PROTECTORS, UnitSpace, build_protector
from medue.testing import make_volume, random_slices

FAST = {"max_rounds": 1, "inner_steps": 3, "train_steps": 2}


_data = random_slices


def _make(method, **kw):
    params = {"conv": {}, "t2ue": {"train_steps": 4, "reference_size": 16},
              "uc": {"num_clusters": 2, "extractor_steps": 3, "generator_steps": 3, "fit_resolution": 16},
              "salm": {"rounds": 1, "train_steps": 2, "noise_steps": 2, "batch_size": 8}, "lines": {},
              "fields": {}
              }.get(method, dict(FAST))
    params.update(kw)
    return build_protector(method, **params)


@pytest.mark.parametrize("method", PROTECTORS.keys())
def test_budget_integer_units_valid_range_and_shape(method, device):
    x, y, space = _data()
    x, y = x.to(device), y.to(device)
    p = _make(method, epsilon=5)
    delta = p.fit(x, y, space, generator=make_generator(0))
    assert delta.shape == x.shape and delta.device.type == torch.device(device).type
    assert float(delta.abs().max()) <= p.budget  # 5, except conv as published (unbounded: the gate decides)
    assert torch.equal(delta, torch.round(delta))
    assert float((x + delta).min()) >= 0 and float((x + delta).max()) <= 255
    assert float(delta.abs().sum()) > 0
    d2 = p.perturb(x[:4], y[:4], space, generator=make_generator(1))
    assert float(d2.abs().max()) <= p.budget and torch.equal(d2, torch.round(d2))
    assert p.budget == (float("inf") if method == "conv" else 5.0)


@pytest.mark.parametrize("method", PROTECTORS.keys())
def test_epsilon_zero_returns_input(method):
    vol = make_volume((2, 16, 16))
    p = _make(method, epsilon=0)
    x = torch.from_numpy(vol.array.astype(np.float32)).unsqueeze(1)
    p.fit(x, torch.zeros(2, dtype=torch.long), UnitSpace.for_volume(vol), generator=make_generator(0))
    out = p.protect(vol, label=0, seed=3)
    assert np.array_equal(out.array, vol.array) and out.history[-1].stats["linf_units"] == 0


@pytest.mark.parametrize("method", PROTECTORS.keys())
def test_same_seed_same_output(method):
    x, y, space = _data()
    a = _make(method, epsilon=4).fit(x, y, space, generator=make_generator(7))
    b = _make(method, epsilon=4).fit(x, y, space, generator=make_generator(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["salm-samplewise", "em", "sem", "uc"])
def test_volume_protect_record_and_replay(method):
    vol = make_volume((3, 24, 24), dtype="uint16")
    x = torch.from_numpy(vol.array.astype(np.float32)).unsqueeze(1)
    p = _make(method, epsilon=6)
    p.fit(x, None, UnitSpace.for_volume(vol), generator=make_generator(0))
    out = p.protect(vol, seed=11, key_fingerprint="abcd")
    step = out.history[-1]
    assert out.array.dtype == np.uint16 and step.name == method and step.params["seed"] == 11
    assert step.params["key_fingerprint"] == "abcd" and "key" not in step.params
    assert 0 < step.stats["linf_units"] <= 6 and step.output_fingerprint == out.fingerprint
    again = p.protect(vol, seed=step.params["seed"])  # replay from the recorded seed
    assert np.array_equal(again.array, out.array)


@pytest.mark.parametrize("method,kwargs,match", [
    ("salm-samplewise", {"epsilon": -1}, "epsilon must be a whole number"),
    ("salm-samplewise", {"epsilon": 2.5}, "epsilon must be a whole number"),
    ("salm-samplewise", {"mask_ratio": 0}, r"mask_ratio must be in \(0, 1\]"),
    ("salm-samplewise", {"mask_ratio": 1.5}, r"mask_ratio must be in \(0, 1\]"),
    ("em", {"mode": "pixelwise"}, "mode must be one of"),
    ("em", {"step": 0}, "step must be a whole number"),
    ("sem", {"rho": -2}, "rho must be"),
    ("conv", {"kernel_size": 4}, "kernel_size must be a positive odd integer"),
    ("conv", {"blur": 0}, r"blur must be in \(0, 1\]"),
    ("uc", {"num_clusters": 0}, "num_clusters must be an integer >= 1"),
    ("uc", {"mask_ratio": 0}, r"mask_ratio must be null \(dense\) or in \(0, 1\]"),
    ("em", {"surrogate": "vgg"}, "surrogate must be"),
])
def test_bad_arguments_raise(method, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_protector(method, **kwargs)


def test_unfitted_and_label_errors():
    x, y, space = _data(n=4)
    with pytest.raises(ProtectionError, match="must be fitted first"):
        _make("salm-samplewise").perturb(x, y, space, generator=make_generator(0))
    with pytest.raises(ValueError, match="needs labels"):
        _make("conv").fit(x, None, space, generator=make_generator(0))
    p = _make("conv")
    p.fit(x, y, space, generator=make_generator(0))
    with pytest.raises(ProtectionError, match="needs a label"):
        p.protect(make_volume((1, 8, 8)))


def test_cpu_and_cuda_agree():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x, y, space = _data()
    cpu = _make("conv").fit(x, y, space, generator=make_generator(0))
    gpu = _make("conv").fit(x.cuda(), y.cuda(), space, generator=make_generator(0))
    assert float((cpu - gpu.cpu()).abs().max()) <= 1


@pytest.mark.parametrize("method, params", [
    ("salm-samplewise", {"mode": "classwise", "placement": "flat", "init": "grating", "tile": 4, "max_rounds": 0,
              "mask_ratio": 0.3}),
    ("em", {"mode": "classwise", "max_rounds": 1, "inner_steps": 1, "train_steps": 2, "tile": 4}),
    ("conv", {}),
    ("t2ue", {"train_steps": 3, "reference_size": 16}),
    ("uc", {"num_clusters": 2, "extractor_steps": 2, "generator_steps": 2, "fit_resolution": 16}),
    ("salm-samplewise", FAST),  # sample-wise: draws random numbers, so it is chunked only with the fitted delta
])
def test_protect_in_slice_chunks_under_a_memory_budget_gives_the_same_volume(method, params):
    vol = make_volume((5, 24, 24), dtype="uint16")
    x = torch.from_numpy(vol.array.astype(np.float32)).unsqueeze(1)
    labels = torch.tensor([1, 0, 1, 0, 1])
    p = build_protector(method, epsilon=6, **params)
    fitted = p.fit(x, labels, UnitSpace.for_volume(vol), generator=make_generator(0))
    one_slice = 1  # bytes: one slice per chunk
    whole = p.protect(vol, label=1, seed=3)
    chunked = p.protect(vol, label=1, seed=3, memory_bytes=one_slice)
    assert np.array_equal(whole.array, chunked.array) and whole.history[-1].stats == chunked.history[-1].stats
    if p.slice_independent is False:
        d = fitted.squeeze(1).numpy()
        assert np.array_equal(p.protect(vol, label=1, delta=d).array,
                              p.protect(vol, label=1, delta=d, memory_bytes=one_slice).array)
