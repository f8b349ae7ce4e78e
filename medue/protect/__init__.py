"""Protection methods under one :class:`Protector` interface, looked up by key in ``PROTECTORS``."""

from __future__ import annotations

from typing import Any

from medue.protect.base import Protector, UnitSpace, project
from medue.protect.conv import ConvProtector
from medue.protect.em import EMProtector, SEMProtector
from medue.protect.salm import SALMProtector, salm_perturb
from medue.protect.uc import UCProtector
from medue.registry import Registry

PROTECTORS: Registry[type[Protector]] = Registry("protector")
PROTECTORS.add("salm", SALMProtector)
PROTECTORS.add("em", EMProtector)
PROTECTORS.add("sem", SEMProtector)
PROTECTORS.add("conv", ConvProtector, aliases=("cuda-conv",))
PROTECTORS.add("uc", UCProtector)


def build_protector(method: str, **params: Any) -> Protector:
    """Instantiate the protector registered as ``method`` with ``params`` (validated by its constructor)."""
    return PROTECTORS.get(method)(**params)


__all__ = ["PROTECTORS", "ConvProtector", "EMProtector", "Protector", "SALMProtector", "SEMProtector",
           "UCProtector", "UnitSpace", "build_protector", "project", "salm_perturb"]
