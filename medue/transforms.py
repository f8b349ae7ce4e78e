"""A MONAI dictionary transform that protects images with a fitted medue protector (:func:`medue.api.fit`).

MONAI arrays are channel-first ``(C, H, W)`` or ``(C, H, W, D)``; medue protects each channel as a stack of
``(H, W)`` slices along the last spatial axis, exactly as :func:`medue.api.protect_volume` does for a ``(z, y, x)``
volume. The transform is deterministic for the key and the image, so it can sit in a cached MONAI pipeline.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform

from medue.api import protect_volume
from medue.fidelity.checks import FidelityThresholds
from medue.protect.base import Protector


class ProtectD(MapTransform):
    """Protect ``keys`` of a data dictionary with a fitted protector.

    Args:
        keys: Image keys to protect.
        protector: Fitted protector (:func:`medue.api.fit`).
        key: The site's secret.
        label_key: Key holding the image's class index (class-wise methods need it), or ``None``.
        thresholds: Fidelity policy; an image that fails it raises unless ``allow_failed`` (then it passes
            through protected and ``<key>_fidelity`` records the failures).
        fidelity_key_suffix: Where the fidelity report goes (``None``: not stored).
        unit: Float images only (what ``LoadImaged`` gives): the size of one budget unit in the image's values, e.g.
            ``1.0`` for CT in HU so that ``epsilon`` 8 means 8 HU (``None``: the image's 0.5-99.5 % span / 255, which
            for CT is about 5.5 HU per unit; see :func:`medue.api.protect_volume`).
    """

    def __init__(self, keys: Any, protector: Protector, *, key: str, label_key: Hashable | None = None,
                 thresholds: FidelityThresholds | None = None, allow_failed: bool = False,
                 fidelity_key_suffix: str | None = "_fidelity", allow_missing_keys: bool = False,
                 unit: float | None = None) -> None:
        super().__init__(keys, allow_missing_keys)
        self.protector = protector
        self.secret = key
        self.label_key = label_key
        self.thresholds = thresholds
        self.allow_failed = allow_failed
        self.fidelity_key_suffix = fidelity_key_suffix
        self.unit = unit

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label = None if self.label_key is None else int(np.asarray(d[self.label_key]).reshape(-1)[0])
        for k in self.key_iterator(d):
            image = d[k]
            arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
            out, reports = np.empty_like(arr), []
            for c in range(arr.shape[0]):
                channel = arr[c] if arr.ndim == 4 else arr[c][..., None]  # (H, W[, D])
                vol = np.moveaxis(channel, -1, 0)  # (D, H, W): slices along the last spatial axis
                res = protect_volume(vol, self.protector, key=self.secret, label=label, thresholds=self.thresholds,
                                     unit=self.unit if np.issubdtype(vol.dtype, np.floating) else None)
                if not res.passed and not self.allow_failed:
                    raise ValueError(f"{k}: protected image fails the fidelity policy: {'; '.join(res.fidelity.failures)}")
                back = np.moveaxis(res.array, 0, -1)
                out[c] = back if arr.ndim == 4 else back[..., 0]
                reports.append(res.fidelity.to_dict())
            if isinstance(image, torch.Tensor):  # a MetaTensor keeps its metadata (affine, filename...)
                d[k] = image.clone()
                d[k].data = torch.as_tensor(out, dtype=image.dtype, device=image.device)
            else:
                d[k] = out
            if self.fidelity_key_suffix:
                d[f"{k}{self.fidelity_key_suffix}"] = reports
        return d


__all__: Sequence[str] = ["ProtectD"]
