"""``conv``: the model-free Convolution-based Unlearnable DAtaset of Sadasivan, Soltanolkotabi, Feizi,
"CUDA: Convolution-based Unlearnable Datasets", CVPR 2023. (Named ``conv``: ``cuda`` is a torch device.)

Follows the paper: one random ``kernel_size`` x ``kernel_size`` filter per class, drawn from a private key;
each image is convolved with its class's filter; no model and no training.

Our choices: filter weights are ``U(0, blur)`` around a centre weight of 1 and normalised to sum to 1 (a
blur whose strength ``blur`` plays the paper's blur parameter); the blurred image is rounded to stored units
and the change is clipped to the L-inf ``epsilon`` budget, which the paper does not have (CUDA is not
norm-bounded). The clip keeps the release inside the clinical budget at some cost in effectiveness, which the
efficacy evaluation measures.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medue.protect.base import Protector, UnitSpace, project


class ConvProtector(Protector):
    """Class-wise random convolution filters (Sadasivan et al., CVPR 2023), clipped to ``epsilon``.

    Args:
        kernel_size: Odd filter size (paper: 3).
        blur: Upper bound of the off-centre weights before normalisation (paper's blur parameter).
        num_classes: Number of filters; raised automatically to cover the labels seen in ``fit``.
    """

    key = "conv"
    needs_labels = True

    def __init__(self, *, kernel_size: int = 3, blur: float = 0.3, num_classes: int = 2, epsilon: int = 8,
                 **kwargs: Any) -> None:
        super().__init__(epsilon=epsilon, **kwargs)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, not {kernel_size!r}")
        if not 0.0 < blur <= 1.0:
            raise ValueError(f"blur must be in (0, 1], not {blur}")
        self.kernel_size = kernel_size
        self.blur = float(blur)
        self.num_classes = int(num_classes)
        self.filters: torch.Tensor | None = None

    def params(self) -> dict[str, Any]:
        return {**super().params(), "kernel_size": self.kernel_size, "blur": self.blur,
                "num_classes": self.num_classes}

    def fit(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
            generator: torch.Generator, return_delta: bool = True) -> torch.Tensor | None:
        if labels is None:
            raise ValueError("conv is class-wise: fit() needs labels")
        self.num_classes = max(self.num_classes, int(labels.max()) + 1)
        k = self.kernel_size
        w = torch.rand((self.num_classes, 1, k, k), generator=generator) * self.blur
        w[:, :, k // 2, k // 2] = 1.0
        self.filters = w / w.sum(dim=(1, 2, 3), keepdim=True)
        self.fitted = True
        return self.perturb(x_units, labels, space, generator=generator) if return_delta else None

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
        pad = self.kernel_size // 2
        x = F.pad(x_units.reshape(1, n, *x_units.shape[-2:]), (pad, pad, pad, pad), mode="replicate")
        blurred = F.conv2d(x, filt, groups=n).reshape_as(x_units)
        return project(blurred - x_units, x_units, space, self.epsilon)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.filters is None else {"filters": self.filters}

    def load_state(self, state: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        self.filters = state.get("filters")
        if self.filters is not None:
            self.num_classes = max(self.num_classes, int(self.filters.shape[0]))
        self.fitted = True
