"""Protection methods under one :class:`Protector` interface, looked up by key in ``PROTECTORS``."""

from __future__ import annotations

from typing import Any

from medue.protect.base import Protector, UnitSpace, project
from medue.protect.conv import ConvProtector
from medue.protect.em import EMProtector, SEMProtector
from medue.protect.fields import FieldsProtector
from medue.protect.lines import LinesProtector
from medue.protect.salm import SALMProtector, SampleSALMProtector, salm_perturb
from medue.protect.t2ue import T2UEProtector
from medue.protect.uc import UCProtector
from medue.registry import Registry

PROTECTORS: Registry[type[Protector]] = Registry("protector")
PROTECTORS.add("salm", SALMProtector)
PROTECTORS.add("salm-samplewise", SampleSALMProtector)
PROTECTORS.add("lines", LinesProtector)
PROTECTORS.add("fields", FieldsProtector)
PROTECTORS.add("em", EMProtector)
PROTECTORS.add("sem", SEMProtector)
PROTECTORS.add("conv", ConvProtector, aliases=("cuda-conv",))
PROTECTORS.add("uc", UCProtector)
PROTECTORS.add("t2ue", T2UEProtector)


def build_protector(method: str, **params: Any) -> Protector:
    """Instantiate the protector registered as ``method`` with ``params`` (validated by its constructor)."""
    return PROTECTORS.get(method)(**params)


def load_protector(path: Any, device: Any = "cpu") -> Protector:
    """Read a protector saved by :meth:`Protector.save` (tensors and JSON types only: ``weights_only=True``)."""
    import torch

    from medue.errors import ProtectionError
    from medue.protect.base import STATE_FORMAT

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged bytes raise anything; a pickle is never loaded
        raise ProtectionError(f"{path}: not a readable medue protector file (it is damaged, or holds objects other "
                              f"than tensors, which medue never loads: {type(exc).__name__}); refit the release "
                              "(run without --resume) or restore the file from a backup") from None
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise ProtectionError(f"{path}: not a medue protector file (expected format {STATE_FORMAT}); refit the "
                              "release (run without --resume)")
    protector = build_protector(data["method"], **data["params"])
    protector.load_state(data["state"], data.get("extra", {}))
    protector.fitted = bool(data.get("fitted", True))
    model = getattr(protector, "model", None)
    if model is not None:
        model.to(device)
    return protector


__all__ = ["PROTECTORS", "ConvProtector", "EMProtector", "FieldsProtector", "LinesProtector", "Protector", "SALMProtector",
           "SEMProtector", "SampleSALMProtector", "T2UEProtector", "UCProtector", "UnitSpace", "build_protector",
           "load_protector", "project", "salm_perturb"]
