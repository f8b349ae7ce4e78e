"""``conv``: the model-free Convolution-based Unlearnable DAtaset of Sadasivan, Soltanolkotabi, Feizi,
"CUDA: Convolution-based Unlearnable Datasets", CVPR 2023. (Named ``conv``: ``cuda`` is a torch device.)

What follows the paper (and its reference code): one random ``kernel_size`` x ``kernel_size`` filter per class,
drawn from the private key, its weights ``U(0, blur)`` with one weight at a random position set to 1 (the paper's
centre parameter); each image is convolved with its class's filter with zero padding and divided by its maximum,
so it keeps the top of its range; no model, no training and **no norm bound**: CUDA is a blur, not a small
additive noise, so its change is as large as the blur makes it.

What is ours: images in stored units (CT, MR, 16-bit) take their own ``[min, max]`` where the paper's 8-bit images
take ``[0, 1]`` (identical for an image that reaches 0 and 255); results are rounded to whole stored units and
kept in the valid range. ``clip: true`` adds the L-inf ``epsilon`` clip that medue applied before: that is a
different, weaker method (0.925 clean-test accuracy against 0.945 clean in the old in-memory evaluation) and is
kept only to compare. With ``clip: false`` (the paper) a release with the default fidelity thresholds fails the
gate (max |delta| far above 8 units): the gate says so in the report and nothing is exported unless an override
is recorded (``fidelity.override_reason``), as the release-efficacy benchmark of this method does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medue.protect.base import Protector, UnitSpace, project


class ConvProtector(Protector):
    """Class-wise random convolution filters (Sadasivan et al., CVPR 2023).

    Args:
        kernel_size: Odd filter size (paper: 3).
        blur: Upper bound of the random weights (the paper's blur parameter; 0.3 in its main results).
        num_classes: Number of filters; raised automatically to cover the labels seen in ``fit``.
        clip: Clip the change to ``epsilon`` (ours; not the paper's method). Default ``False``: unbounded, as
            published, and the fidelity gate decides.
    """

    key = "conv"
    looks_like = ("a slight blur or sharpening of the whole image, one filter per class")
    needs_labels = True

    def __init__(self, *, kernel_size: int = 3, blur: float = 0.3, num_classes: int = 2, epsilon: int = 8,
                 clip: bool = False, **kwargs: Any) -> None:
        super().__init__(epsilon=epsilon, **kwargs)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, not {kernel_size!r}")
        if not 0.0 < blur <= 1.0:
            raise ValueError(f"blur must be in (0, 1], not {blur}")
        if not isinstance(clip, bool):
            raise ValueError(f"clip must be true or false, not {clip!r}")
        self.kernel_size = kernel_size
        self.blur = float(blur)
        self.num_classes = int(num_classes)
        self.clip = clip
        self.filters: torch.Tensor | None = None

    @property
    def budget(self) -> float:
        return float(self.epsilon) if self.clip else float("inf")

    def params(self) -> dict[str, Any]:
        return {**super().params(), "kernel_size": self.kernel_size, "blur": self.blur,
                "num_classes": self.num_classes, "clip": self.clip}

    def fit(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
            generator: torch.Generator, return_delta: bool = True) -> torch.Tensor | None:
        if labels is None:
            raise ValueError("conv is class-wise: fit() needs labels")
        self.num_classes = max(self.num_classes, int(labels.max()) + 1)
        k = self.kernel_size
        w = torch.rand((self.num_classes, 1, k, k), generator=generator) * self.blur
        peak = torch.randint(k * k, (self.num_classes,), generator=generator)
        w.view(self.num_classes, -1)[torch.arange(self.num_classes), peak] = 1.0
        self.filters = w
        self.fitted = True
        return self.perturb(x_units, labels, space, generator=generator) if return_delta else None

    @property
    def slice_independent(self) -> bool:
        return True  # one filter per class, each slice blurred on its own

    def fit_uses_pixels(self, labelled: bool) -> bool:
        return False  # the filters are drawn from the key, one per class

    def perturb(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
                generator: torch.Generator) -> torch.Tensor:
        self._check_fitted()
        if labels is None:
            raise ValueError("conv is class-wise: perturb() needs labels")
        assert self.filters is not None
        if int(labels.max()) >= self.filters.shape[0]:
            raise ValueError(f"label {int(labels.max())} has no filter; fit() saw {self.filters.shape[0]} classes")
        filt = self.filters.to(x_units.device)[labels]  # (N, 1, k, k)
        n = x_units.shape[0]
        lo = x_units.amin(dim=(1, 2, 3), keepdim=True)
        top = x_units.amax(dim=(1, 2, 3), keepdim=True) - lo
        x = (x_units - lo).reshape(1, n, *x_units.shape[-2:])
        blurred = F.conv2d(x, filt, padding=self.kernel_size // 2, groups=n).reshape_as(x_units)
        peak = blurred.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        out = lo + blurred / peak * top  # the paper's img / img.max(), on the image's own range
        return project(out - x_units, x_units, space, self.budget)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.filters is None else {"filters": self.filters}

    def load_state(self, state: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        self.filters = state.get("filters")
        if self.filters is not None:
            self.num_classes = max(self.num_classes, int(self.filters.shape[0]))
        self.fitted = True
