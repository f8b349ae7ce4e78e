"""Low-frequency class fields: a smooth, keyed intensity field per class, placed on the tissue of every image.

Why this carrier: the attacker's everyday habits (rotation and zoom with bilinear interpolation, Gaussian smoothing,
area resampling to half size, a median filter, JPEG) all act as low-pass filters. A pattern with a period of 3-8 px
is what they erase; a field whose energy sits at periods of 1/8 to 1/2 of the image side is what they keep. Flips
map an orientation to its mirror image, so each class is coded by an *orientation band* that flips keep (two classes:
fields varying along x and fields varying along y) and a rotation of 15 degrees barely moves.

The field of class ``c`` is a sum of ``components`` plane waves

    f_c(u, v) = sum_k a_k cos(2 pi n_k (u cos phi_k + v sin phi_k) + psi_k),   u, v in [0, 1) (image coordinates)

with ``n_k`` cycles per image side drawn log-uniformly from ``[1 / periods[1], 1 / periods[0]]``, ``phi_k`` within
``jitter_deg`` of the class orientation ``pi c / C``, ``psi_k`` and ``a_k`` drawn from the site's key. The default is
what measured best on release files: one sinusoid per class (``components=1``) of period 1/4 of the side, along the
image axes (``jitter_deg=0``); several waves over 2-8 cycles, or a tilt, were weaker at the same PSNR. With one fixed
period the key draws only the phase, which a network does not learn; a ``periods`` range draws each class's
frequency from the key, the keyed content ``medue verify`` tests for. Defined in image coordinates, the same field
covers 64, 128 or 512 px slices and every slice of a CT volume.

Coupling to the image:

* ``additive``: ``delta = A f_c w`` with ``w`` the tissue (model-space intensity above ``tissue_level``, edges
  softened by a Gaussian of ``edge`` x side), so background stays untouched;
* ``multiplicative``: ``delta = A f_c x`` with ``x`` the pixel's intensity (the slice's 0.5-99.5 percentile span
  mapped to [0, 1]): a smooth gain change, the form of MRI's own bias field, which contrast changes scale and
  intensity normalisation keeps.

The amplitude ``A`` of each slice is the largest that keeps its PSNR at ``psnr_db`` (span: ``psnr_range``) and its
largest change at ``epsilon`` stored units, in whole units. Every class carries its field (``blank_class`` can leave
one unchanged). Nothing is optimised: the fields are drawn from the key at fit time, from the labels alone.

Not a published method: the carrier of this family follows a measurement made outside the repository (a class-wise
sinusoid of period 16 px on 64 px Br35H slices held an augmenting attacker near chance at about 30 dB); the keyed
waves, the couplings and the budget rule are ours. What it stops, at which fidelity, is measured in
``benchmarks/results/README.md`` (``fields`` frontier).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from medue.errors import ProtectionError
from medue.protect.base import BlankClassMixin, Protector, UnitSpace
from medue.protect.robust import rounded_budget_scale, slice_span
from medue.protect.stand_ins import gaussian_blur

COUPLINGS = ("additive", "multiplicative")
PSNR_RANGES = ("slice", "dtype")


def class_fields(components: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(C, height, width)`` fields, each scaled so that its largest absolute value is 1.

    Args:
        components: ``(C, K, 4)`` rows of (cycles per side, orientation in radians, phase in radians, weight).
    """
    device = components.device
    u = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
    v = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    cycles, angle, phase, weight = (components[..., i, None, None] for i in range(4))
    waves = weight * torch.cos(2 * math.pi * cycles * (uu * torch.cos(angle) + vv * torch.sin(angle)) + phase)
    fields = waves.sum(1)
    peak = fields.flatten(1).abs().amax(1).clamp_min(1e-6)
    return fields / peak.view(-1, 1, 1)


def draw_components(num_classes: int, *, count: int, periods: tuple[float, float], jitter_deg: float,
                    generator: torch.Generator) -> torch.Tensor:
    """The keyed plane waves of every class, ``(num_classes, count, 4)`` (see :func:`class_fields`)."""
    lo, hi = math.log(1 / periods[1]), math.log(1 / periods[0])
    rows = []
    for c in range(num_classes):
        base = math.pi * c / max(num_classes, 2)
        r = torch.rand(count, 4, generator=generator)
        cycles = torch.exp(lo + (hi - lo) * r[:, 0])
        angle = base + math.radians(jitter_deg) * (2 * r[:, 1] - 1)
        phase = 2 * math.pi * r[:, 2]
        weight = 0.5 + 0.5 * r[:, 3]
        rows.append(torch.stack([cycles, angle, phase, weight], 1))
    return torch.stack(rows)


def field_weight(x_model: torch.Tensor, *, coupling: str, tissue_level: float, edge: float) -> torch.Tensor:
    """Where and how strongly the field acts on each pixel, in ``[0, 1]`` (see the module docstring)."""
    if coupling == "multiplicative":
        weight = x_model.clamp(0, 1)
    else:
        weight = (x_model > tissue_level).to(x_model.dtype)
    sigma = edge * max(x_model.shape[-2:])
    if sigma >= 0.3 and min(x_model.shape[-2:]) > 2 * math.ceil(3 * sigma):
        weight = gaussian_blur(weight, sigma) * (weight > 0)
    return weight


def scaled_delta(raw: torch.Tensor, x_units: torch.Tensor, space: UnitSpace, *, epsilon: int, psnr_db: float,
                 psnr_range: str) -> torch.Tensor:
    """``raw`` (unit peak) scaled per slice to the largest amplitude within ``epsilon`` and the PSNR budget,
    rounded to whole stored units and clipped to the valid range."""
    if psnr_range == "dtype":
        span = torch.full((x_units.shape[0],), float(space.hi - space.lo), device=x_units.device)
    else:
        span = slice_span(x_units)
    target = raw * float(epsilon)
    scale = rounded_budget_scale(target, span, psnr_db, epsilon, tries=12, shrink=0.95)
    delta = torch.round(target * scale).clamp(-epsilon, epsilon)
    return (x_units + delta).clamp(space.lo, space.hi) - x_units


class FieldsProtector(BlankClassMixin, Protector):
    """A smooth stripe field per class (a sinusoid, period 1/4 of the side) on every image's tissue, in a PSNR budget.

    See the module docstring for the carrier, its couplings and why it is low-frequency.

    Args:
        psnr_db: Each slice keeps at least this PSNR (span: ``psnr_range``); the amplitude is the largest that does,
            up to ``epsilon``.
        periods: Shortest and longest period of the waves, as fractions of the image side (default ``(0.25,
            0.25)``: 16 px on a 64 px slice, 128 px on a 512 px one).
        components: Plane waves per class (default 1: one sinusoid).
        jitter_deg: Spread of the waves' orientations around the class orientation, degrees (default 0: along the
            image axes, which flips keep).
        coupling: ``"additive"`` (on the tissue) or ``"multiplicative"`` (a gain change, proportional to intensity).
        tissue_level: Model-space intensity above which a pixel is tissue (additive coupling).
        edge: Softening of the tissue edge, a Gaussian sigma as a fraction of the image side (0: a hard edge).
        psnr_range: ``"slice"`` (the slice's max - min: strict) or ``"dtype"`` (the stored type's span, as the
            fidelity gate's ``data_range: dtype``).
        blank_class: ``false`` (every class carries its field), ``true`` (the first class carries none) or a class
            index.
        **kwargs: :class:`~medue.protect.base.Protector` arguments (``epsilon``: the largest change, stored units).
    """

    key = "fields"
    looks_like = ("a smooth, gentle brightening and darkening of the tissue in broad stripes (a few across the image), "
                  "horizontal for one class and vertical for the other: like a mild scanner shading")
    needs_labels = True

    def __init__(self, *, psnr_db: float = 32.0, periods: tuple[float, float] | list[float] = (0.25, 0.25),
                 components: int = 1, jitter_deg: float = 0.0, coupling: str = "additive",
                 tissue_level: float = 0.08, edge: float = 0.0, psnr_range: str = "slice",
                 blank_class: bool | int = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        problems = []
        if not isinstance(psnr_db, (int, float)) or isinstance(psnr_db, bool) or not 0 < psnr_db < 100:
            problems.append(f"psnr_db must be a number of decibels in (0, 100), not {psnr_db!r}")
        if (not isinstance(periods, (list, tuple)) or len(periods) != 2
                or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in periods)
                or not 0 < periods[0] <= periods[1] <= 2):
            problems.append(f"periods must be [shortest, longest] fractions of the image side with "
                            f"0 < shortest <= longest <= 2, not {periods!r}")
        if not isinstance(components, int) or isinstance(components, bool) or not 1 <= components <= 64:
            problems.append(f"components must be a whole number from 1 to 64, not {components!r}")
        if not isinstance(jitter_deg, (int, float)) or isinstance(jitter_deg, bool) or not 0 <= jitter_deg <= 90:
            problems.append(f"jitter_deg must be a number of degrees in [0, 90], not {jitter_deg!r}")
        if coupling not in COUPLINGS:
            problems.append(f"coupling must be one of {list(COUPLINGS)}, not {coupling!r}")
        if not isinstance(tissue_level, (int, float)) or isinstance(tissue_level, bool) or not 0 <= tissue_level < 1:
            problems.append(f"tissue_level must be a model-space intensity in [0, 1), not {tissue_level!r}")
        if not isinstance(edge, (int, float)) or isinstance(edge, bool) or not 0 <= edge <= 0.25:
            problems.append(f"edge must be a fraction of the image side in [0, 0.25], not {edge!r}")
        if psnr_range not in PSNR_RANGES:
            problems.append(f"psnr_range must be one of {list(PSNR_RANGES)}, not {psnr_range!r}")
        if not isinstance(blank_class, int) or (not isinstance(blank_class, bool) and blank_class < 0):
            problems.append(f"blank_class must be true, false or a class index >= 0, not {blank_class!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.psnr_db = float(psnr_db)
        self.periods = (float(periods[0]), float(periods[1]))
        self.components = int(components)
        self.jitter_deg = float(jitter_deg)
        self.coupling = coupling
        self.tissue_level = float(tissue_level)
        self.edge = float(edge)
        self.psnr_range = psnr_range
        self.blank_class = blank_class
        self.waves: torch.Tensor | None = None

    def params(self) -> dict[str, Any]:
        return {**super().params(), "psnr_db": self.psnr_db, "periods": list(self.periods),
                "components": self.components, "jitter_deg": self.jitter_deg, "coupling": self.coupling,
                "tissue_level": self.tissue_level, "edge": self.edge, "psnr_range": self.psnr_range,
                "blank_class": self.blank_class}

    def inert_params(self) -> frozenset[str]:
        inert = {"step", "batch_size"}
        if self.coupling == "multiplicative":
            inert.add("tissue_level")
        return frozenset(inert)

    @property
    def slice_independent(self) -> bool:
        return True  # each slice's own weight and budget; the waves are drawn at fit time

    def fit_uses_pixels(self, labelled: bool) -> bool:
        return False  # the waves come from the key and the number of classes

    def fit(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
            generator: torch.Generator, return_delta: bool = True) -> torch.Tensor | None:
        if labels is None:
            raise ProtectionError("fields places one field per class: give the release's labels (labels: in the "
                                  "config), or use a label-agnostic method (uc)")
        num_classes = max(int(labels.max()) + 1, 2) if labels.numel() else 2
        self.waves = draw_components(num_classes, count=self.components, periods=self.periods,
                                     jitter_deg=self.jitter_deg, generator=generator)
        self.fitted = True
        return self.perturb(x_units, labels, space, generator=generator) if return_delta else None

    def class_fields(self, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(C, height, width)`` unit-peak fields of the fitted classes (the blank class's is zero)."""
        self._check_fitted()
        assert self.waves is not None
        fields = class_fields(self.waves.to(device), height, width)
        blank = self._blank()
        if blank is not None and blank < fields.shape[0]:
            fields[blank] = 0
        return fields

    def perturb(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
                generator: torch.Generator) -> torch.Tensor:
        self._check_fitted()
        if labels is None:
            raise ProtectionError("fields applies the field of each item's class: give the item's label")
        fields = self.class_fields(*x_units.shape[-2:], device=x_units.device)
        labels = labels.to(x_units.device).clamp(0, fields.shape[0] - 1)
        weight = field_weight(space.to_model(x_units), coupling=self.coupling, tissue_level=self.tissue_level,
                              edge=self.edge)
        raw = fields[labels].unsqueeze(1) * weight
        return scaled_delta(raw, x_units, space, epsilon=self.epsilon, psnr_db=self.psnr_db,
                            psnr_range=self.psnr_range)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.waves is None else {"waves": self.waves}

    def load_state(self, state: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        self.waves = state.get("waves")
        self.fitted = True
