"""SALM: Sparsity-Aware Local Masking (Sun, Liu, Yan, Xu, Sun, "Medical Unlearnable Examples: Securing Medical
Data from Unauthorized Training via Sparsity-Aware Local Masking", arXiv 2403.10573, 2024), made robust to the way
people train (``salm``).

The paper's two ideas, error-minimising noise and a budget spent on a sparse mask of the most significant pixels:
one tile per class, fitted by the min-min loop through random attacker habits (augmentation, resampling, blur,
median, bit depth, JPEG, noise) against two surrogates (:mod:`medue.protect.robust`, :mod:`medue.habits`); the mask
is each slice's brightest ``mask_ratio`` of pixels (significance from intensity, not from one surrogate's gradient,
so that it is the same for every attacker); every class carries its tile. Ours: the habits, the class tiles, the
intensity mask and the per-slice PSNR budget.

The paper's own sample-wise loop is :mod:`medue.protect.salm_samplewise` (``salm-samplewise``); the placed line
pattern that grew out of it, :mod:`medue.protect.lines` (``lines``). What each of them stops is in
``benchmarks/results/README.md``.
"""

from __future__ import annotations

from typing import Any

import torch

from medue.errors import ProtectionError
from medue.habits import FIT_HABITS as HABITS
from medue.protect.base import BlankClassMixin, Protector, UnitSpace, per_sample_mask
from medue.protect.robust import fit_tiles, place, salient_mask


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
        habits: Attacker habits the fit draws from (:data:`medue.habits.FIT_HABITS`).
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
