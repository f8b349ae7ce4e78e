"""A fitted protector on disk (``private/protector.pt``): its :meth:`~medue.protect.base.Protector.to_payload`
saved with ``torch.save``, read back with ``torch.load(..., weights_only=True)``: tensors and JSON types only, so that
reading a protector file can run no pickled code. :mod:`medue.protect` itself opens no file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medue.errors import ProtectionError
from medue.protect import Protector, from_payload


def save_protector(protector: Protector, path: str | Path) -> None:
    """Write ``protector`` (fitted or not) to ``path``."""
    torch.save(protector.to_payload(), path)


def load_protector(path: str | Path, device: Any = "cpu") -> Protector:
    """The protector :func:`save_protector` wrote to ``path``, its surrogate (if any) on ``device``.

    Raises:
        ProtectionError: the file is damaged, holds other objects than tensors, or is not a protector file.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- damaged bytes raise anything; a pickle is never loaded
        raise ProtectionError(f"{path}: not a readable medue protector file (it is damaged, or holds objects other "
                              f"than tensors, which medue never loads: {type(exc).__name__}); refit the release "
                              "(run without --resume) or restore the file from a backup") from None
    try:
        protector = from_payload(data)
    except ProtectionError as exc:
        raise ProtectionError(f"{path}: {exc}; refit the release (run without --resume)") from None
    model = getattr(protector, "model", None)
    if model is not None:
        model.to(device)
    return protector


__all__ = ["load_protector", "save_protector"]
