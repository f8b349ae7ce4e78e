"""Unlearnable Clusters (medue.protect.uc): cluster-wise, label-agnostic noise."""

import torch

from medue.protect import build_protector
from medue.protect.base import UnitSpace


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
