"""Unlearnable Clusters (Zhang et al., "Unlearnable Clusters: Towards Label-agnostic Unlearnable Examples",
CVPR 2023): label-agnostic, cluster-wise noise from generators, clusters from a feature extractor.

What follows the paper (and its reference code):

* no labels anywhere: the release's images are grouped by K-means on the features of a feature extractor, and
  every image of cluster ``k`` gets the same perturbation ``delta_k``;
* ``delta_k`` is the output of a generator (one per cluster) fed with a fixed uniform-noise image; the generator
  is trained so that *every* image of the release plus ``delta_k`` has features close to the anchor (centre) of
  another cluster, ``(k + target_offset) mod K``: the loss is the KL divergence between the softmax of the
  features and the softmax of that anchor (the paper's "disrupting uniformity and discrepancy"), under random
  flips and crops, Adam with weight decay 5e-4, L-inf bounded; the noise is made at one size and resized to each
  image with nearest-neighbour interpolation;
* K = 10 clusters by default (the paper's setting).

What is ours, and why:

* **Feature extractor**: the paper clusters with an ImageNet or CLIP ResNet-50. No weights can be downloaded here
  and none ship inside the required packages, so medue trains its own at fit time: the ``SmallResNet`` of
  :mod:`medue.protect.surrogate` (a ResNet-style network of torch building blocks) trained by SimCLR-style
  contrastive learning (NT-Xent, temperature 0.5, random resized crops, flips, brightness/contrast and noise) on
  the release's own images, *without labels*. The paper's reference code also ships a SimCLR surrogate; a
  self-supervised extractor keeps the method label-agnostic by construction. It is trained and used at
  ``fit_resolution`` px (area-resized) because the clusters and the anchors need coarse content, not pixels.
* **Budget**: ``epsilon`` stored units (the paper's 16/255 would fail medue's fidelity gate on 8-bit data; 8 is
  the release default). The generator ends in ``tanh`` scaled to the budget (the paper clamps, whose gradient is
  zero outside the box); the delta is rounded to whole units and projected like every medue method.
* **Cost**: a small generator (two residual blocks) and ``generator_steps`` Adam steps per cluster instead of 50
  epochs of a nine-block ResNet generator; the fit runs on one CPU thread so that a key always gives the same
  release (several threads change the order of float sums and with it the generators).
* ``mask_ratio``: the paper's noise is dense; ``mask_ratio`` (default ``None``: dense, as the paper) keeps it to
  each image's flattest pixels, as medue's class-wise methods do, when a release must change fewer pixels.

A dense delta of 8 units does not pass a 38 dB PSNR gate, so a release of this method relies on the gate's
adaptation (a random part of the support kept, the amplitude scaled) unless ``mask_ratio`` is set.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from medue.device import single_thread
from medue.protect.base import Protector, UnitSpace, batches, per_sample_mask, project
from medue.protect.clusters import assign, kmeans
from medue.protect.masks import flat_region_mask
from medue.protect.stand_ins import attacker_view
from medue.protect.surrogate import SmallResNet


class NoiseGenerator(nn.Module):
    """A fixed-input generator: ``(1, 1, s, s)`` uniform noise -> ``(1, 1, s, s)`` perturbation in ``[-1, 1]``."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                                   nn.Conv2d(width, width, 3, 1, 1), nn.BatchNorm2d(width))
                                     for _ in range(2)])
        self.tail = nn.Conv2d(width, 1, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z)
        for block in self.blocks:
            h = F.relu(h + block(h))
        return torch.tanh(self.tail(h))


def _views(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One random SimCLR-style view of each image of ``x`` (model space): resized crop, flip, intensity, noise."""
    n = x.shape[0]
    scale = 0.6 + 0.4 * torch.rand(n, generator=g)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (1 - scale)[:, None]
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = scale * flip, scale, shift
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gain = (0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)).to(x.device)
    bias = ((torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.2).to(x.device)
    return out * gain + bias + 0.02 * torch.randn(out.shape, generator=g).to(x.device)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy of two batches of paired projections."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    n = a.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(a.device)
    return F.cross_entropy(sim, target)


class UCProtector(Protector):
    """Cluster-wise, label-agnostic noise (Unlearnable Clusters). Labels passed to ``fit``/``perturb`` are ignored.

    Args:
        num_clusters: K for K-means (paper: 10).
        target_offset: Cluster ``k``'s noise pulls features towards the anchor of cluster ``k + target_offset``.
        fit_resolution: Side in px at which the extractor and the generators see the images (area-resized).
        extractor_steps: SimCLR steps of the feature extractor.
        generator_steps: Adam steps of each cluster's generator.
        lr: Learning rate of the generators (the extractor uses 1e-3).
        mask_ratio: ``None`` (dense, as the paper) or the fraction of each image's flattest pixels that carries
            the noise.
        **kwargs: :class:`~medue.protect.base.Protector` arguments (``epsilon``, ``batch_size``…).
    """

    key = "uc"
    looks_like = ("faint noise over the whole image, one pattern per cluster of similar images")
    needs_labels = False

    def __init__(self, *, num_clusters: int = 10, target_offset: int = 1, fit_resolution: int = 32,
                 extractor_steps: int = 150, generator_steps: int = 60, lr: float = 1e-3,
                 mask_ratio: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value, lowest in (("num_clusters", num_clusters, 1), ("target_offset", target_offset, 1),
                                    ("fit_resolution", fit_resolution, 16), ("extractor_steps", extractor_steps, 0),
                                    ("generator_steps", generator_steps, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
                raise ValueError(f"{name} must be an integer >= {lowest}, not {value!r}")
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
            raise ValueError(f"lr must be a positive number, not {lr!r}")
        if mask_ratio is not None and (not isinstance(mask_ratio, (int, float)) or isinstance(mask_ratio, bool)
                                       or not 0.0 < mask_ratio <= 1.0):
            raise ValueError(f"mask_ratio must be null (dense) or in (0, 1], not {mask_ratio!r}")
        self.num_clusters, self.target_offset, self.fit_resolution = num_clusters, target_offset, fit_resolution
        self.extractor_steps, self.generator_steps, self.lr = extractor_steps, generator_steps, float(lr)
        self.mask_ratio = None if mask_ratio is None else float(mask_ratio)
        self.extractor: SmallResNet | None = None
        self.centroids: torch.Tensor | None = None
        self.noise: torch.Tensor | None = None  # (K, 1, s, s) in [-1, 1]; times epsilon = stored units
        self.cluster_sizes: list[int] = []
        self.losses: dict[str, list[float]] = {}  # per step (extractor), last per cluster (generators)
        self.progress: Callable[[str], None] | None = None

    def params(self) -> dict[str, Any]:
        return {**super().params(), "num_clusters": self.num_clusters, "target_offset": self.target_offset,
                "fit_resolution": self.fit_resolution, "extractor_steps": self.extractor_steps,
                "generator_steps": self.generator_steps, "lr": self.lr, "mask_ratio": self.mask_ratio}

    # --- fitting ----------------------------------------------------------------------------------------------
    def _small(self, x_units: torch.Tensor, space: UnitSpace) -> torch.Tensor:
        """Model-space images at ``fit_resolution``, on the CPU, ``batch_size`` slices at a time."""
        s = self.fit_resolution
        return torch.cat([F.interpolate(space.select(sl).to_model(x_units[sl]).float(), size=(s, s), mode="area")
                          .cpu() for sl in batches(x_units.shape[0], 256)])

    def fit(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
            generator: torch.Generator, return_delta: bool = True) -> torch.Tensor | None:
        """Extractor (SimCLR, no labels), K-means clusters and anchors, then one generator per cluster."""
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        small = self._small(x_units, space)
        scale = space.scale.reshape(-1, 1, 1, 1).float().cpu() if isinstance(space.scale, torch.Tensor) else None
        eps = self.epsilon / (scale if scale is not None and scale.shape[0] == small.shape[0]
                              else torch.full((small.shape[0], 1, 1, 1), float(space.scale)))
        with single_thread():  # a key must give the same release
            self._fit(small, eps, seed)
        self.fitted = True
        return self.perturb(x_units, None, space, generator=generator) if return_delta else None

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def _fit(self, small: torch.Tensor, eps: torch.Tensor, seed: int) -> None:
        """``eps``: the budget in model space, per slice ``(N, 1, 1, 1)``."""
        g = torch.Generator().manual_seed(seed)
        n, bs = small.shape[0], min(self.batch_size, small.shape[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.extractor = SmallResNet(2)
            head = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
        self.losses = {"extractor": [], "generators": []}
        opt = torch.optim.Adam([*self.extractor.parameters(), *head.parameters()], lr=1e-3, weight_decay=1e-6)
        self.extractor.train()
        for step in range(self.extractor_steps if n > 1 else 0):
            x = small[torch.randint(n, (max(bs, 2),), generator=g)]
            loss = nt_xent(head(self.extractor.features(_views(x, g))), head(self.extractor.features(_views(x, g))))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.losses["extractor"].append(round(float(loss.detach()), 5))
            if step % 50 == 49:
                self._say(f"uc: feature extractor (SimCLR, no labels) step {step + 1}/{self.extractor_steps}, "
                          f"loss {float(loss):.3f}")
        self.extractor.eval()
        for p in self.extractor.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            feats = torch.cat([self.extractor.features(small[sl]) for sl in batches(n, 256)])
        cluster, self.centroids = kmeans(F.normalize(feats, dim=1), self.num_clusters, generator=g)
        k = int(self.centroids.shape[0])
        anchors = torch.stack([feats[cluster == j].mean(0) if (cluster == j).any() else feats.mean(0)
                               for j in range(k)])
        self.cluster_sizes = [int((cluster == j).sum()) for j in range(k)]
        self._say(f"uc: {k} clusters of {self.cluster_sizes} slices; training one noise generator per cluster")
        s = self.fit_resolution
        z = torch.rand((1, 1, s, s), generator=g)
        noise = []
        for j in range(k):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1 + j)
                net = NoiseGenerator()
            net.train()
            opt_g = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=5e-4)
            target = F.softmax(anchors[(j + self.target_offset) % k], dim=0).expand(bs, -1)
            losses = []
            for _ in range(self.generator_steps):
                idx = torch.randint(n, (bs,), generator=g)
                view = attacker_view((small[idx] + eps[idx] * net(z)), ("flip", "shift"), g, max_shift=max(1, s // 16))
                loss = F.kl_div(F.log_softmax(self.extractor.features(view), dim=1), target, reduction="batchmean")
                opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_g.step()
                losses.append(round(float(loss.detach()), 5))
            net.eval()
            with torch.no_grad():
                noise.append(net(z))
            self.losses["generators"].append(losses[-1])
        self.noise = torch.cat(noise)

    # --- applying ---------------------------------------------------------------------------------------------
    @property
    def slice_independent(self) -> bool:
        return True  # each slice assigned to its cluster on its own

    @torch.no_grad()
    def clusters_of(self, x_units: torch.Tensor, space: UnitSpace) -> torch.Tensor:
        """The fitted cluster of every slice of ``x_units`` (nearest centroid of its extractor features)."""
        self._check_fitted()
        assert self.extractor is not None and self.centroids is not None
        small = self._small(x_units, space)
        feats = torch.cat([self.extractor.features(small[sl]) for sl in batches(small.shape[0], 256)])
        return assign(F.normalize(feats, dim=1), self.centroids).to(x_units.device)

    @torch.no_grad()
    def perturb(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
                generator: torch.Generator) -> torch.Tensor:
        self._check_fitted()
        assert self.noise is not None
        pattern = F.interpolate(self.noise, size=tuple(x_units.shape[-2:]), mode="nearest").to(x_units.device)
        delta = torch.round(pattern[self.clusters_of(x_units, space)] * self.epsilon)
        if self.mask_ratio is not None:
            delta = delta * per_sample_mask(partial(flat_region_mask, max_level=None), x_units, space,
                                            self.mask_ratio)
        return project(delta, x_units, space, self.epsilon)

    def state_dict(self) -> dict[str, Any]:
        if self.extractor is None or self.noise is None or self.centroids is None:
            return {}
        return {**{f"extractor.{k}": v for k, v in self.extractor.state_dict().items()},
                "centroids": self.centroids, "noise": self.noise}

    def extra_state(self) -> dict[str, Any]:
        return {"cluster_sizes": list(self.cluster_sizes), "losses": dict(self.losses)}

    def load_state(self, state: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        weights = {k[len("extractor."):]: v for k, v in state.items() if k.startswith("extractor.")}
        if weights:
            self.extractor = SmallResNet(2)
            self.extractor.load_state_dict(weights)
            self.extractor.eval()
            self.centroids, self.noise = state["centroids"], state["noise"]
        self.cluster_sizes = list(extra.get("cluster_sizes", []))
        self.losses = dict(extra.get("losses", {}))
        self.fitted = True


__all__ = ["NoiseGenerator", "UCProtector", "nt_xent"]
