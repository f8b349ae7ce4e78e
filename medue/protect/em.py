"""Error-minimising noise (EM); stable error-minimising noise (SEM) is its setting in :mod:`medue.protect.sem`.

EM: Huang, Ma, Erfani, Bailey, Wang, "Unlearnable Examples: Making Personal Data Unexploitable", ICLR 2021.
Sample-wise and class-wise noise from the min-min loop in :mod:`medue.protect.minmin`; defaults follow the
paper's CIFAR settings scaled to stored units (epsilon 8 units = 8/255 for 8-bit data, 20 inner steps,
10 surrogate steps per round, stop at 99 % surrogate accuracy on perturbed data). The step size is one stored
unit (the paper's 0.8/255 is below one unit and would vanish when rounded).

Labels: without labels, ``fit`` uses pseudo-labels from K-means on surrogate features (ours, so the method
also works label-agnostically); ``perturb`` on new samples uses the given label or the surrogate's prediction.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from medue.habits import MINMIN_AUGMENTATIONS as AUGMENTATIONS
from medue.protect.base import Protector, UnitSpace, batches, per_sample_mask, project, rows_per_pass
from medue.protect.clusters import assign, kmeans, surrogate_features
from medue.protect.masks import flat_region_mask, foreground_mask
from medue.protect.minmin import (
    MaskFn,
    MinMinSettings,
    RoundCheckpoint,
    bilevel_classwise_tiled,
    bilevel_samplewise,
    error_minimizing_delta,
    grating,
    tile_to,
)
from medue.protect.surrogate import SURROGATES, make_surrogate, surrogate_for

MODES = ("samplewise", "classwise")
INITS = ("zeros", "random", "grating")
PLACEMENTS = ("pattern", "flat")


class EMProtector(Protector):
    """Error-minimising noise (Huang et al., ICLR 2021), sample-wise or class-wise.

    Args:
        mode: ``"samplewise"`` or ``"classwise"``.
        inner_steps: Sign steps per noise update.
        train_steps: Surrogate optimiser steps per round.
        max_rounds: Upper bound on min-min rounds; class-wise noise may use 0 (its initial pattern, unrefined).
        stop_accuracy: Stop once the surrogate reaches this accuracy on perturbed data.
        surrogate: ``"auto"`` (``"strided"`` for a fit at :data:`~medue.protect.surrogate.STRIDED_FROM` px and
            more, else ``"small"``; the fitted protector records which), ``"small"``, ``"strided"`` (a stride-2 stem)
            or ``"resnet18"``; see :mod:`medue.protect.surrogate` for the costs behind the choice.
        lr: Surrogate learning rate (SGD, momentum 0.9).
        num_clusters: Pseudo-label count when ``fit`` gets no labels.
        rho: SEM's random-noise radius in stored units (0 for EM).
        tile: Class-wise only: period in pixels of the class pattern (0: one pattern the size of the image).
            A periodic pattern fits any resolution and a crop only shifts its phase.
        block: Class-wise only: the support is chosen in ``block`` x ``block`` cells (blobs survive median filters
            and smoothing better than isolated pixels).
        augment: Transformations both minimisations see (a subset of :data:`medue.habits.MINMIN_AUGMENTATIONS`),
            so the noise stays a shortcut under an attacker's augmentation and preprocessing.
        init: Class-wise only: ``"zeros"`` (paper), ``"random"`` (random signs at the budget, from the key) or
            ``"grating"`` (one stripe orientation per class, :func:`medue.protect.minmin.grating`).
        flat_max_level: ``placement="flat"`` only: the flat region stops where the local mean reaches this level
            (model space: the volume's 0.5-99.5 percentile span is [0, 1]); 0.15 keeps to air and background, 1
            lets the region reach the flattest tissue when there is too little background.
        blank_class: Class-wise only: ``true`` (or a class index: the classes sorted by name, from 0) leaves the
            first (or that) class without a pattern, the others with theirs. A model that learned
            "pattern -> its class" then reads a clean image (no pattern) as the first class, instead of falling
            back on the anatomy as it does when every class has a pattern and a clean image has none of them.
        fine_ratio: ``placement="flat"`` class-wise only: the flattest ``fine_ratio`` of each image (inside the
            flat region) carries a second grating of the same class orientation with period ``fine_tile`` and even
            duty instead of the main pattern; 0 (default) turns it off. Measured on release files at 128 px, it
            stopped neither every network nor every seed (``benchmarks/results/README.md``): not recommended.
        fine_tile: Period in pixels of the ``fine_ratio`` band's grating (even duty: ``fine_tile // 2`` px on).
        duty: Class-wise grating only: fraction of each period that is on (0.5: even stripes; 0.25: thin lines
            whose harmonics reach both a strided stem and a 3x3 one).
        placement: Class-wise only: where a sample carries its class pattern. ``"pattern"``: everywhere the
            pattern's own (sparse) support allows; ``"flat"``: on the ``support_ratio`` fraction of each image's
            darkest, flattest pixels (:func:`medue.protect.masks.flat_region_mask`), the pattern dense there and
            non-negative (a negative change at the bottom of the stored range would be clipped away).
        **kwargs: :class:`~medue.protect.base.Protector` arguments (``epsilon``, ``step``…).
    """

    key = "em"
    looks_like = ("faint noise over the whole image, optimised per image (class-wise: one noise pattern per class)")
    rho_default: Callable[[int], int] = staticmethod(lambda eps: 0)  # type: ignore[assignment]

    def __init__(self, *, mode: str = "samplewise", inner_steps: int = 20, train_steps: int = 10,
                 max_rounds: int = 10, stop_accuracy: float = 0.99, surrogate: str = "auto", lr: float = 0.1,
                 num_clusters: int = 2, rho: int | None = None, tile: int = 0, block: int = 1,
                 augment: tuple[str, ...] | list[str] = (), init: str = "zeros", placement: str = "pattern",
                 duty: float = 0.5, blank_class: bool | int = False, flat_max_level: float = 0.15,
                 fine_ratio: float = 0.0, fine_tile: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value in (("tile", tile), ("block", block)):
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "tile" else 1):
                raise ValueError(f"{name} must be a whole number of pixels >= {0 if name == 'tile' else 1}, "
                                 f"not {value!r}")
        if isinstance(augment, str) or not all(a in AUGMENTATIONS for a in augment):
            raise ValueError(f"augment must be a list drawn from {list(AUGMENTATIONS)}, not {augment!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, not {init!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, not {placement!r}")
        self.tile, self.block, self.augment, self.init = tile, block, tuple(augment), init
        self.placement = placement
        if not isinstance(duty, (int, float)) or isinstance(duty, bool) or not 0.0 < duty < 1.0:
            raise ValueError(f"duty must be a fraction in (0, 1), not {duty!r}")
        self.duty = float(duty)
        if not isinstance(blank_class, int) or (not isinstance(blank_class, bool) and blank_class < 0):
            raise ValueError(f"blank_class must be true, false or a class index >= 0, not {blank_class!r}")
        self.blank_class = blank_class
        if not isinstance(flat_max_level, (int, float)) or isinstance(flat_max_level, bool) \
                or not 0.0 < flat_max_level <= 1.0:
            raise ValueError(f"flat_max_level must be in (0, 1], not {flat_max_level!r}")
        self.flat_max_level = float(flat_max_level)
        if not isinstance(fine_ratio, (int, float)) or isinstance(fine_ratio, bool) or not 0.0 <= fine_ratio < 1.0:
            raise ValueError(f"fine_ratio must be a fraction in [0, 1), not {fine_ratio!r}")
        if not isinstance(fine_tile, int) or isinstance(fine_tile, bool) or fine_tile < 2:
            raise ValueError(f"fine_tile must be a whole number of pixels >= 2, not {fine_tile!r}")
        if fine_ratio > 0 and (placement != "flat" or mode != "classwise" or init != "grating"):
            raise ValueError("fine_ratio needs mode: classwise, placement: flat and init: grating "
                             f"(found mode {mode!r}, placement {placement!r}, init {init!r}); set fine_ratio: 0")
        self.fine_ratio, self.fine_tile = float(fine_ratio), fine_tile
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        for name, value in (("inner_steps", inner_steps), ("train_steps", train_steps), ("max_rounds", max_rounds),
                            ("num_clusters", num_clusters)):
            lowest = 0 if (name == "max_rounds" and mode == "classwise") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
                raise ValueError(f"{name} must be an integer >= {lowest}, not {value!r}"
                                 + (" (0 rounds, no min-min refinement, only for class-wise noise)"
                                    if name == "max_rounds" else ""))
        if not isinstance(stop_accuracy, (int, float)) or isinstance(stop_accuracy, bool) \
                or not 0.0 < stop_accuracy <= 1.0:
            raise ValueError(f"stop_accuracy must be in (0, 1], not {stop_accuracy}")
        if surrogate not in ("auto", *SURROGATES):
            raise ValueError(f"surrogate must be one of {('auto', *SURROGATES)}, not {surrogate!r}")
        rho = self.rho_default(self.epsilon) if rho is None else rho
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
            raise ValueError(f"lr must be a positive number, not {lr!r}")
        if not isinstance(rho, int) or isinstance(rho, bool) or rho < 0:
            raise ValueError(f"rho must be a whole number of stored units >= 0, not {rho!r}")
        self.mode = mode
        self.surrogate_arch = surrogate
        self.num_clusters = num_clusters
        self.settings = MinMinSettings(epsilon=self.epsilon, step=self.step, inner_steps=inner_steps,
                                       train_steps=train_steps, max_rounds=max_rounds, stop_accuracy=stop_accuracy,
                                       batch_size=self.batch_size, lr=lr, rho=rho)
        self.model: torch.nn.Module | None = None
        self.class_noise: torch.Tensor | None = None
        self.support: torch.Tensor | None = None
        self.feature_seed: int | None = None
        self.centroids: torch.Tensor | None = None
        self.history: list[float] = []
        self.progress: Callable[[str], None] | None = None
        #: Sample-wise fit only: where the release path keeps its per-round checkpoint and delta buffers
        #: (:class:`~medue.protect.minmin.RoundCheckpoint`, :class:`medue.store.FitCheckpoint`); ``None`` keeps the
        #: deltas in memory.
        self.checkpoint: RoundCheckpoint | None = None

    def params(self) -> dict[str, Any]:
        s = self.settings
        return {**super().params(), "mode": self.mode, "inner_steps": s.inner_steps, "train_steps": s.train_steps,
                "max_rounds": s.max_rounds, "stop_accuracy": s.stop_accuracy, "surrogate": self.surrogate_arch,
                "lr": s.lr, "rho": s.rho, "num_clusters": self.num_clusters, "tile": self.tile,
                "block": self.block, "augment": list(self.augment), "init": self.init, "placement": self.placement,
                "duty": self.duty, "blank_class": self.blank_class, "flat_max_level": self.flat_max_level,
                "fine_ratio": self.fine_ratio, "fine_tile": self.fine_tile}

    #: What only the min-min refinement reads: a class-wise pattern placed with ``max_rounds: 0`` ignores them.
    REFINEMENT_PARAMS = frozenset({"surrogate", "lr", "inner_steps", "train_steps", "stop_accuracy", "rho",
                                   "augment", "mask_update"})

    def inert_params(self) -> frozenset[str]:
        inert: set[str] = set()
        if self.mode == "classwise" and self.settings.max_rounds == 0:
            inert |= self.REFINEMENT_PARAMS | {"step"}  # the sign step of the noise update, never taken
        if self.fine_ratio == 0:
            inert.add("fine_tile")
        if self.mode == "classwise" and self.placement == "flat":
            inert.add("block")  # the pattern is dense on its placement: no cells are chosen
        return frozenset(inert)

    @property
    def support_ratio(self) -> float:
        """Fraction of each class pattern that may be non-zero (1 for EM; SALM's ``mask_ratio``)."""
        return 1.0

    def mask_fn(self) -> MaskFn | None:
        return None

    def _allowed(self, x: torch.Tensor, space: UnitSpace) -> torch.Tensor | None:
        return foreground_mask(space.to_model(x)) if self.foreground_only else None

    def _placement(self, x: torch.Tensor, space: UnitSpace) -> torch.Tensor | None:
        """Per-sample 0/1 mask of where the class pattern goes (``placement: flat``), else ``None``."""
        if self.placement == "pattern":
            return None
        return per_sample_mask(self._flat_region, x, space, self.support_ratio)

    def _flat_region(self, x_model: torch.Tensor, ratio: float) -> torch.Tensor:
        return flat_region_mask(x_model, ratio, max_level=None if self.flat_max_level >= 1.0 else self.flat_max_level)

    def _class_delta(self, x: torch.Tensor, labels: torch.Tensor, space: UnitSpace) -> torch.Tensor:
        """Class-wise delta before projection: each sample's class pattern on its placement (and fine band)."""
        assert self.class_noise is not None
        noise = tile_to(self.class_noise.to(x.device), *x.shape[-2:])
        labels = labels.clamp(0, noise.shape[0] - 1)
        placement = self._placement(x, space)
        delta = noise[labels] if placement is None else noise[labels] * placement
        if self.fine_ratio > 0:
            fine = grating(noise.shape[0], self.fine_tile, self.fine_tile, period=self.fine_tile, duty=0.5)
            fine = fine.clamp_min(0).to(x.device) * self.epsilon
            if self._blank_index() is not None and self._blank_index() < fine.shape[0]:
                fine[self._blank_index()] = 0
            band = per_sample_mask(self._flat_region, x, space, self.fine_ratio)
            delta = delta * (1 - band) + tile_to(fine, *x.shape[-2:])[labels] * band
        return delta

    @property
    def slice_independent(self) -> bool:
        return self.mode == "classwise"  # a class pattern on a per-slice placement

    def fit_uses_pixels(self, labelled: bool) -> bool:
        # a class pattern that is placed, not optimised (no min-min round, or no budget), of a fixed period needs
        # only the classes; labels from clusters or a full-size pattern (tile 0) need the images
        return not (labelled and self.mode == "classwise" and self.tile > 0
                    and (self.settings.max_rounds == 0 or self.epsilon == 0))

    @property
    def streams_fit(self) -> bool:
        return self.mode == "samplewise"

    def fit(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
            generator: torch.Generator, return_delta: bool = True) -> torch.Tensor | None:
        """Fit on every slice. Sample-wise, ``x_units`` may also be a :class:`~medue.store.SliceStore` (the
        release on disk, streamed batch by batch) and, with :attr:`checkpoint` set, the deltas returned are the
        checkpoint's int16 buffer of the last round."""
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        if labels is None:
            self.feature_seed = seed
            feats = surrogate_features(x_units, space, seed=seed, batch_size=self.batch_size)
            labels, self.centroids = kmeans(feats, self.num_clusters, generator=generator)
        labels = labels.to(x_units.device)
        num_classes = int(labels.max()) + 1 if labels.numel() else 1
        if self.surrogate_arch == "auto":
            self.surrogate_arch = surrogate_for(tuple(x_units.shape[-2:]))
        self.model = make_surrogate(self.surrogate_arch, max(num_classes, 2), seed=seed, device=x_units.device)
        if self.epsilon == 0:
            self.fitted = True
            return torch.zeros(x_units.shape, device=x_units.device) if return_delta else None
        if self.mode == "classwise":
            # the per-sample placement is needed to refine the pattern or to return deltas, not otherwise
            needed = self.settings.max_rounds > 0 or return_delta
            placement = self._placement(x_units, space) if needed else None
            noise, self.support, self.history = bilevel_classwise_tiled(
                self.model, x_units, labels, num_classes, space, settings=self.settings, generator=generator,
                tile=self.tile, mask_ratio=1.0 if self.placement != "pattern" else self.support_ratio,
                block=self.block,
                augment=self.augment, init=self.init, duty=self.duty, placement=placement,
                positive=self.placement == "flat",
                progress=self.progress)
            self.class_noise = noise * self.support
            if self._blank_index() is not None and self._blank_index() >= self.class_noise.shape[0]:
                raise ValueError(f"blank_class {self.blank_class} names no class: the release has "
                                 f"{self.class_noise.shape[0]} (0 to {self.class_noise.shape[0] - 1})")
            if self._blank_index() is not None:
                self.class_noise[self._blank_index()] = 0  # no pattern for that class: clean images look like it
            if not return_delta:
                self.fitted = True
                return None
            delta = project(self._class_delta(x_units, labels, space), x_units, space, self.epsilon)
        else:
            delta, self.history = bilevel_samplewise(
                self.model, x_units, labels, space, settings=self.settings, generator=generator,
                mask_fn=self.mask_fn(), allowed=self._allowed if self.foreground_only else None,
                progress=self.progress, checkpoint=self.checkpoint)
        self.fitted = True
        return delta

    @torch.no_grad()
    def _predict(self, x: torch.Tensor, space: UnitSpace) -> torch.Tensor:
        assert self.model is not None
        self.model.eval()
        return torch.cat([self.model(space.select(sl).to_model(x[sl])).argmax(1)
                          for sl in batches(x.shape[0], min(self.batch_size, rows_per_pass(x.shape)))])

    def _blank_index(self) -> int | None:
        if self.blank_class is False:
            return None
        return 0 if self.blank_class is True else int(self.blank_class)

    def unchanged_label(self, label: int | None) -> bool:
        """Whether an item of class ``label`` is left unchanged on purpose (``blank_class``, class-wise only)."""
        return self.mode == "classwise" and label is not None and label == self._blank_index()

    def perturb(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
                generator: torch.Generator) -> torch.Tensor:
        self._check_fitted()
        assert self.model is not None
        self.model.to(x_units.device)
        if labels is None and self.centroids is not None and self.feature_seed is not None:
            # fitted without labels: the same clusters as the fit (features of the same seeded network)
            feats = surrogate_features(x_units, space, seed=self.feature_seed, batch_size=self.batch_size)
            labels = assign(feats, self.centroids)
        labels = self._predict(x_units, space) if labels is None else labels
        if self.mode == "classwise":
            return project(self._class_delta(x_units, labels, space), x_units, space, self.epsilon)
        delta = torch.zeros_like(x_units)
        allowed = self._allowed(x_units, space)
        for sl in batches(x_units.shape[0], self.batch_size):
            delta[sl] = error_minimizing_delta(self.model, x_units[sl], labels[sl], delta[sl], space.select(sl),
                                               settings=self.settings, steps=self.settings.inner_steps,
                                               generator=generator, mask_fn=self.mask_fn(),
                                               allowed=None if allowed is None else allowed[sl])
        return delta

    def extra_state(self) -> dict[str, Any]:
        num_classes = None
        if self.model is not None:
            last = [m for m in self.model.modules() if isinstance(m, torch.nn.Linear)]
            num_classes = int(last[-1].out_features) if last else None
        return {"feature_seed": self.feature_seed, "num_classes": num_classes, "history": list(self.history)}

    def load_state(self, state: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        model_state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        if model_state:
            self.model = make_surrogate(self.surrogate_arch, int(extra["num_classes"]), seed=0,
                                        device=torch.device("cpu"))
            self.model.load_state_dict(model_state)
        self.class_noise = state.get("class_noise")
        self.support = state.get("support")
        self.centroids = state.get("centroids")
        self.feature_seed = extra.get("feature_seed")
        self.history = list(extra.get("history", []))
        self.fitted = True

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.model is not None:
            state.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        if self.class_noise is not None:
            state["class_noise"] = self.class_noise
        if self.support is not None:
            state["support"] = self.support
        if self.centroids is not None:
            state["centroids"] = self.centroids
        return state
