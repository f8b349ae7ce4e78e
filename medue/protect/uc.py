"""Unlearnable Clusters (Zhang et al., "Unlearnable Clusters: Towards Label-agnostic Unlearnable Examples",
CVPR 2023): label-agnostic, cluster-wise noise.

Follows the paper: no labels are used; samples are grouped by K-means on a surrogate's features and every
cluster gets one shared perturbation, so the noise is a shortcut tied to clusters rather than classes.

Our choices: the paper clusters CLIP features and trains a noise generator; nothing may be downloaded here, so
the features come from a seeded, randomly initialised surrogate trained on nothing, and each cluster's noise is
optimised as class-wise error-minimising noise against a surrogate trained on the cluster pseudo-labels (the
min-min loop of :mod:`medue.protect.minmin`). New samples are assigned to the nearest centroid.
"""

from __future__ import annotations

from typing import Any

import torch

from medue.protect.base import UnitSpace
from medue.protect.em import EMProtector


class UCProtector(EMProtector):
    """Cluster-wise, label-agnostic noise. Labels passed to ``fit``/``perturb`` are ignored.

    Args:
        num_clusters: K for K-means (paper: a few to tens of clusters).
        **kwargs: :class:`~medue.protect.em.EMProtector` arguments.
    """

    key = "uc"

    def __init__(self, *, num_clusters: int = 4, **kwargs: Any) -> None:
        kwargs["mode"] = "classwise"
        super().__init__(num_clusters=num_clusters, **kwargs)

    def fit(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
            generator: torch.Generator, return_delta: bool = True) -> torch.Tensor | None:
        # EM's label-free path: K-means clusters of a seeded surrogate's features stand in for the labels
        return super().fit(x_units, None, space, generator=generator, return_delta=return_delta)

    def perturb(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
                generator: torch.Generator) -> torch.Tensor:
        self._check_fitted()
        assert self.centroids is not None and self.feature_seed is not None
        return super().perturb(x_units, None, space, generator=generator)  # assigned to the fitted clusters
