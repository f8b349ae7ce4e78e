"""Pseudo-labels for label-free fits (medue.protect.clusters): seeded surrogate features and K-means."""

import pytest
import torch

from medue.protect import base
from medue.protect.clusters import assign, kmeans, surrogate_features
from medue.testing import random_slices


def test_features_are_the_same_in_passes_and_carry_no_autograd_graph(monkeypatch):
    x, _, space = random_slices(n=6, size=16)
    whole = surrogate_features(x, space, seed=3)
    assert not whole.requires_grad and whole.shape[0] == 6
    assert torch.allclose(whole.norm(dim=1), torch.ones(6))
    monkeypatch.setattr(base, "PIXELS_PER_PASS", 2 * 16 * 16)  # as for slices too large for one pass
    assert torch.allclose(surrogate_features(x, space, seed=3), whole, atol=1e-6)
    assert not torch.allclose(surrogate_features(x, space, seed=4), whole)  # another seed, another network


def test_kmeans_is_seeded_finds_separated_groups_and_assigns_new_points():
    g = torch.Generator().manual_seed(0)
    feats = torch.cat([torch.randn(10, 4, generator=g) * 0.05 + 3, torch.randn(10, 4, generator=g) * 0.05 - 3])
    labels, centroids = kmeans(feats, 2, generator=torch.Generator().manual_seed(1))
    again, _ = kmeans(feats, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(labels, again)
    assert len(set(labels[:10].tolist())) == 1 and len(set(labels[10:].tolist())) == 1 and labels[0] != labels[10]
    assert torch.equal(assign(feats, centroids), labels)
    assert kmeans(feats[:3], 5, generator=torch.Generator().manual_seed(0))[1].shape[0] == 3  # k <= n
    with pytest.raises(ValueError, match="number of clusters must be >= 1"):
        kmeans(feats, 0, generator=torch.Generator().manual_seed(0))
