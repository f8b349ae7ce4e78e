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


def test_foreground_only_leaves_background():
    vol = make_volume((2, 24, 24))
    x = torch.from_numpy(vol.array.astype(np.float32)).unsqueeze(1)
    p = _make("em", epsilon=4, foreground_only=True)
    p.fit(x, None, UnitSpace.for_volume(vol), generator=make_generator(0))
    out = p.protect(vol, seed=1)
    air = vol.array == vol.array.min()
    from scipy.ndimage import binary_erosion

    deep_air = binary_erosion(air, iterations=3, structure=np.ones((1, 3, 3)))
    assert np.array_equal(out.array[deep_air], vol.array[deep_air])


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


def test_uc_is_cluster_wise_label_free_and_applies_at_release_the_noise_it_fitted():
    g = torch.Generator().manual_seed(4)
    dark = (torch.rand(8, 1, 32, 32, generator=g) * 40).round()
    bright = (torch.rand(8, 1, 32, 32, generator=g) * 40 + 200).round()
    x = torch.cat([dark, bright])
    space = UnitSpace(0.0, 255.0, 0.0, 255.0)
    p = build_protector("uc", num_clusters=2, extractor_steps=5, generator_steps=5, fit_resolution=16, epsilon=6)
    d = p.fit(x, None, space, generator=torch.Generator().manual_seed(0))
    with_labels = build_protector("uc", **{k: v for k, v in p.params().items()})
    assert torch.equal(d, with_labels.fit(x, torch.arange(16) % 2, space, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(d, p.perturb(x, None, space, generator=torch.Generator().manual_seed(1)))
    clusters = p.clusters_of(x, space)
    assert sorted(p.cluster_sizes) == sorted(torch.bincount(clusters, minlength=2).tolist())
    pattern = torch.round(torch.nn.functional.interpolate(p.noise, size=(32, 32), mode="nearest") * 6)
    inside = (x >= 6) & (x <= 249)  # where the valid range cannot clip the delta
    for i in range(16):  # every image carries its cluster's one perturbation
        assert torch.equal(d[i][inside[i]], pattern[clusters[i]][inside[i]])
    assert 0 < d.abs().max() <= 6 and torch.equal(d, d.round())
    sparse = build_protector("uc", **{**p.params(), "mask_ratio": 0.25})
    ds = sparse.fit(x, None, space, generator=torch.Generator().manual_seed(0))
    assert (ds != 0).float().mean(dim=(1, 2, 3)).max() <= 0.25 + 1e-6


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


def test_t2ue_text_embedding_is_deterministic_and_relates_shared_words():
    from medue.protect.t2ue import embed_text

    a, b = embed_text("brain MRI with a tumour"), embed_text("brain MRI with a tumour")
    assert torch.equal(a, b) and abs(float(a.norm()) - 1) < 1e-6
    near, far = float(a @ embed_text("brain MRI without a tumour")), float(a @ embed_text("chest x-ray fracture"))
    assert near > far


def test_t2ue_is_zero_contact_the_images_never_enter_the_fit():
    space = UnitSpace(0.0, 255.0, 0.0, 255.0)
    y = torch.tensor([0, 1, 0, 1])
    kw = dict(texts=["brain MRI, no tumour", "brain MRI with a tumour"], train_steps=6, reference_size=16, epsilon=8)
    a = build_protector("t2ue", **kw)
    a.fit(torch.zeros(4, 1, 16, 16), y, space, generator=make_generator(3), return_delta=False)
    b = build_protector("t2ue", **kw)
    b.fit(torch.round(torch.rand(4, 1, 24, 24) * 255), y, space, generator=make_generator(3), return_delta=False)
    assert a.state_fingerprint() == b.state_fingerprint() != ""  # same key and texts: same generator
    x = torch.zeros(2, 1, 16, 16)
    x[:, :, :, 8:] = 150  # a body on the right half: the pattern goes on the flat background
    d = a.perturb(x, torch.tensor([0, 1]), space, generator=make_generator(0))
    assert torch.equal(d, torch.round(d)) and float(d.min()) >= 0 and float(d.max()) <= 8
    assert float((d != 0).float().mean()) <= 0.15 and not torch.equal(d[0], d[1])
    with pytest.raises(ValueError, match="one text per class"):
        build_protector("t2ue", texts=["only one"], train_steps=1).fit(
            x, torch.tensor([0, 2]), space, generator=make_generator(0))


def test_t2ue_fit_is_the_same_whatever_the_thread_count():
    space = UnitSpace(0.0, 255.0, 0.0, 255.0)
    y = torch.tensor([0, 1])
    threads = torch.get_num_threads()
    fingerprints = []
    try:
        for n in (2, 2, 1):
            torch.set_num_threads(n)
            p = build_protector("t2ue", epsilon=8, train_steps=20)
            p.fit(torch.zeros(2, 1, 8, 8), y, space, generator=make_generator(5), return_delta=False)
            fingerprints.append(p.state_fingerprint())
            assert torch.get_num_threads() == n  # the caller's setting is restored
    finally:
        torch.set_num_threads(threads)
    assert len(set(fingerprints)) == 1


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
