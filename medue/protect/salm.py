"""SALM: Sparsity-Aware Local Masking (Sun, Liu, Yan, Xu, Sun, "Medical Unlearnable Examples: Securing Medical
Data from Unauthorized Training via Sparsity-Aware Local Masking", arXiv 2403.10573, 2024), and the placed line
pattern that grew out of it.

Three protectors:

* :class:`SALMProtector` (``salm``): the paper's two ideas, error-minimising noise and a budget spent on a sparse mask
  of the most significant pixels, made robust to the way people train. One tile per class, fitted by the min-min
  loop through random attacker habits (augmentation, resampling, blur, median, bit depth, JPEG, noise) against two
  surrogates (:mod:`medue.protect.robust`, :mod:`medue.protect.habits`); the mask is each slice's brightest
  ``mask_ratio`` of pixels (significance from intensity, not from one surrogate's gradient, so that it is the same
  for every attacker); every class carries its tile. Ours: the habits, the class tiles, the intensity mask and the
  per-slice PSNR budget.
* :class:`SampleSALMProtector` (``salm-samplewise``): the paper's method: sample-wise error-minimising noise from the
  EM min-min loop, restricted at every step to the top ``mask_ratio`` of ``|dL/dx|`` of the surrogate (ours: the
  delta is projected onto the mask, so its support never exceeds ``mask_ratio``; ``mask_update="sticky"`` keeps
  pixels already perturbed).
* :class:`LinesProtector` (``lines``): no optimisation. 1-px lines every 3 px, one orientation per class, on the
  flattest 45 % of each image, the first class left unchanged so that a clean image reads as that class.

What each of them stops, and every configuration tried on the way, is in ``benchmarks/results/README.md``.
``salm_perturb`` is the single-batch pure function of the sample-wise method used by the tests.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medue.errors import ProtectionError
from medue.protect.base import BlankClassMixin, Protector, UnitSpace, per_sample_mask
from medue.protect.em import EMProtector
from medue.protect.habits import HABITS
from medue.protect.robust import fit_tiles, place, salient_mask
from medue.protect.masks import topk_mask
from medue.protect.minmin import MaskFn, MinMinSettings, error_minimizing_delta


MASK_UPDATES = ("step", "sticky")


def saliency_mask_fn(ratio: float, update: str = "step") -> MaskFn:
    """Top-``ratio`` pixels per sample.

    ``update="step"`` ranks by gradient magnitude alone at every step. ``update="sticky"`` ranks first by
    the magnitude of the proposed delta, then by gradient magnitude (normalised to ``[0, 1)`` per sample, so it
    only breaks ties): pixels already perturbed keep their place and the noise can accumulate up to the budget.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1], not {ratio}")
    if update not in MASK_UPDATES:
        raise ValueError(f"mask_update must be one of {MASK_UPDATES}, not {update!r}")
    if update == "step":
        return lambda grad, x_model, proposed: topk_mask(grad.abs(), ratio)

    def sticky(grad: torch.Tensor, x_model: torch.Tensor, proposed: torch.Tensor) -> torch.Tensor:
        g = grad.abs()
        peak = g.flatten(1).amax(1).clamp_min(torch.finfo(g.dtype).tiny).view(-1, *([1] * (g.dim() - 1)))
        return topk_mask(proposed.abs() + 0.5 * g / peak, ratio)

    return sticky


def salm_perturb(model: nn.Module, x_units: torch.Tensor, labels: torch.Tensor, space: UnitSpace, *,
                 epsilon: int, step: int = 1, steps: int = 20, mask_ratio: float = 0.1, mask_update: str = "sticky",
                 generator: torch.Generator, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Sparse error-minimising delta for one batch against a fixed surrogate.

    Args:
        model: Surrogate classifier taking model-space ``(N, 1, H, W)`` input.
        x_units: Stored-unit images ``(N, 1, H, W)`` (float holding integers).
        labels: ``(N,)`` class indices the noise makes *easy* to predict.
        space: Stored units <-> model space.
        epsilon: L-inf budget in stored units.
        mask_ratio: Fraction of pixels that may change, in ``(0, 1]``.
        mask_update: ``"step"`` or ``"sticky"``, see :func:`saliency_mask_fn`.

    Returns:
        Integer delta, same shape as ``x_units``; non-zero on at most ``mask_ratio`` of each sample's pixels.
    """
    settings = MinMinSettings(epsilon=epsilon, step=step, inner_steps=steps)
    return error_minimizing_delta(model, x_units, labels, torch.zeros_like(x_units), space, settings=settings,
                                  steps=steps, generator=generator, mask_fn=saliency_mask_fn(mask_ratio, mask_update),
                                  allowed=allowed)


class SampleSALMProtector(EMProtector):
    """SALM as the paper runs it (Sun et al. 2024): sample-wise error-minimising noise on a sparse saliency mask.

    Args:
        mask_ratio: Fraction of pixels per slice that may change, in ``(0, 1]``.
        mask_update: ``"step"`` (re-rank by saliency every step) or ``"sticky"`` (keep perturbed pixels),
            see :func:`saliency_mask_fn`.
        **kwargs: :class:`~medue.protect.em.EMProtector` arguments (``mode`` is always sample-wise).
    """

    key = "salm-samplewise"
    looks_like = ("faint speckle on the most significant pixels of each image, different on every image")

    def __init__(self, *, mask_ratio: float = 0.1, mask_update: str = "sticky", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(mask_ratio, (int, float)) or not 0.0 < mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1], not {mask_ratio!r}")
        if mask_update not in MASK_UPDATES:
            raise ValueError(f"mask_update must be one of {MASK_UPDATES}, not {mask_update!r}")
        self.mask_ratio = float(mask_ratio)
        self.mask_update = mask_update

    def params(self) -> dict[str, Any]:
        return {**super().params(), "mask_ratio": self.mask_ratio, "mask_update": self.mask_update}

    def mask_fn(self) -> MaskFn:
        return saliency_mask_fn(self.mask_ratio, self.mask_update)

    @property
    def support_ratio(self) -> float:
        return self.mask_ratio


class SALMProtector(BlankClassMixin, Protector):
    """SALM through the attacker's habits: one error-minimising pattern per class, fitted by the min-min loop through
    random augmentation, resampling and purification (:mod:`medue.protect.robust`), on each image's most significant
    pixels (the brightest anatomy), within the PSNR budget of every slice.

    Args:
        period: Side in pixels of the class tile (the pattern repeats every ``period`` px).
        mask_ratio: Fraction of each slice's pixels that carry the pattern (SALM's sparse local mask).
        psnr_db: Each slice's delta is scaled to keep at least this PSNR (span: the slice's max - min).
        rounds: Min-min rounds (0: the oriented gratings the fit starts from, unrefined).
        train_steps: Surrogate steps per round (each surrogate of the ensemble).
        noise_steps: Sign steps of the class tiles per round.
        lr: Surrogate learning rate (SGD, momentum 0.9).
        habits: Attacker habits the fit draws from (:data:`medue.protect.habits.HABITS`).
        blank_class: ``false`` (every class carries its pattern), ``true`` (the first class carries none) or a class
            index.
        **kwargs: :class:`~medue.protect.base.Protector` arguments (``epsilon``, ``step``, ``batch_size``).
    """

    key = "salm"
    looks_like = ("a faint fine striped texture on the brightest anatomy of each image, one stripe direction per class")
    needs_labels = True

    def __init__(self, *, period: int = 6, mask_ratio: float = 0.4, psnr_db: float = 38.5, rounds: int = 15,
                 train_steps: int = 10, noise_steps: int = 10, lr: float = 0.05,
                 habits: tuple[str, ...] | list[str] = HABITS, blank_class: bool | int = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        problems = []
        if not isinstance(period, int) or isinstance(period, bool) or period < 2:
            problems.append(f"period must be a whole number of pixels >= 2, not {period!r}")
        if not isinstance(mask_ratio, (int, float)) or isinstance(mask_ratio, bool) or not 0 < mask_ratio <= 1:
            problems.append(f"mask_ratio must be in (0, 1], not {mask_ratio!r}")
        if not isinstance(psnr_db, (int, float)) or isinstance(psnr_db, bool) or not 0 < psnr_db < 100:
            problems.append(f"psnr_db must be a number of decibels in (0, 100), not {psnr_db!r}")
        for name, value in (("rounds", rounds), ("train_steps", train_steps), ("noise_steps", noise_steps)):
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "rounds" else 1):
                problems.append(f"{name} must be a whole number >= {0 if name == 'rounds' else 1}, not {value!r}")
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
            problems.append(f"lr must be a positive number, not {lr!r}")
        if isinstance(habits, str) or not all(h in HABITS for h in habits) or not habits:
            problems.append(f"habits must be a non-empty list drawn from {list(HABITS)}, not {habits!r}")
        if not isinstance(blank_class, int) or (not isinstance(blank_class, bool) and blank_class < 0):
            problems.append(f"blank_class must be true, false or a class index >= 0, not {blank_class!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.period, self.mask_ratio, self.psnr_db = period, float(mask_ratio), float(psnr_db)
        self.rounds, self.train_steps, self.noise_steps, self.lr = rounds, train_steps, noise_steps, float(lr)
        self.habits = tuple(habits)
        self.blank_class = blank_class
        self.tiles: torch.Tensor | None = None
        self.history: list[float] = []
        self.progress: Any = None

    def params(self) -> dict[str, Any]:
        return {**super().params(), "period": self.period, "mask_ratio": self.mask_ratio, "psnr_db": self.psnr_db,
                "rounds": self.rounds, "train_steps": self.train_steps, "noise_steps": self.noise_steps,
                "lr": self.lr, "habits": list(self.habits), "blank_class": self.blank_class}

    @property
    def slice_independent(self) -> bool:
        return True  # a class tile on each slice's own mask and budget: no random draw at export

    def _mask(self, x_units: torch.Tensor, space: UnitSpace) -> torch.Tensor:
        return per_sample_mask(salient_mask, x_units, space, self.mask_ratio)

    def fit(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
            generator: torch.Generator, return_delta: bool = True) -> torch.Tensor | None:
        if labels is None:
            raise ProtectionError("salm fits one pattern per class: give the release's labels (labels: in the "
                                  "config), or use a label-agnostic method (uc)")
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        mask = self._mask(x_units, space)
        self.tiles, self.history = fit_tiles(
            x_units, labels.to(x_units.device), space, mask, epsilon=self.epsilon, period=self.period,
            psnr_db=self.psnr_db, rounds=self.rounds if self.epsilon > 0 else 0, train_steps=self.train_steps,
            noise_steps=self.noise_steps, batch_size=self.batch_size, lr=self.lr, step=float(self.step), seed=seed,
            generator=generator, habits=self.habits, blank=self._blank(), progress=self.progress)
        self.fitted = True
        return self.perturb(x_units, labels, space, generator=generator) if return_delta else None

    def perturb(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
                generator: torch.Generator) -> torch.Tensor:
        self._check_fitted()
        assert self.tiles is not None
        if labels is None:
            raise ProtectionError("salm applies the pattern of each item's class: give the item's label")
        tiles = self.tiles.to(x_units.device)
        labels = labels.clamp(0, tiles.shape[0] - 1)
        return place(tiles, labels, self._mask(x_units, space), x_units, space, epsilon=self.epsilon,
                     psnr_db=self.psnr_db)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.tiles is None else {"tiles": self.tiles}

    def extra_state(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state(self, state: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        self.tiles = state.get("tiles")
        self.history = list(extra.get("history", []))
        self.fitted = True
