"""K-means on surrogate features: pseudo-labels for label-agnostic protection (UC, EM without labels)."""

from __future__ import annotations

import torch

from medue.protect.base import UnitSpace, batches, rows_per_pass
from medue.protect.surrogate import make_surrogate


@torch.no_grad()
def surrogate_features(x_units: torch.Tensor, space: UnitSpace, *, seed: int, batch_size: int = 64,
                       model: torch.nn.Module | None = None) -> torch.Tensor:
    """Pooled features of a seeded, randomly initialised surrogate (or of ``model``), L2-normalised; large slices go
    through in fewer rows at a time (:func:`~medue.protect.base.rows_per_pass`)."""
    model = model or make_surrogate("small", 2, seed=seed, device=x_units.device)
    model.eval()
    rows = min(batch_size, rows_per_pass(x_units.shape))
    feats = torch.cat([model.features(space.select(sl).to_model(x_units[sl]))
                       for sl in batches(x_units.shape[0], rows)])
    return torch.nn.functional.normalize(feats, dim=1)


def kmeans(features: torch.Tensor, k: int, *, generator: torch.Generator, iters: int = 50
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's K-means with k-means++ seeding from ``generator``. Returns ``(labels, centroids)``."""
    n = features.shape[0]
    if k < 1:
        raise ValueError(f"number of clusters must be >= 1, not {k}")
    k = min(k, n)
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [features[first]]
    for _ in range(1, k):
        d2 = torch.cdist(features, torch.stack(centroids)).min(1).values ** 2
        probs = (d2 / d2.sum()).cpu() if float(d2.sum()) > 0 else torch.full((n,), 1.0 / n)
        centroids.append(features[int(torch.multinomial(probs, 1, generator=generator))])
    c = torch.stack(centroids)
    labels = torch.zeros(n, dtype=torch.long, device=features.device)
    for _ in range(iters):
        labels = torch.cdist(features, c).argmin(1)
        new = torch.stack([features[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
        if torch.allclose(new, c):
            break
        c = new
    return labels, c


def assign(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return torch.cdist(features, centroids.to(features.device)).argmin(1)
