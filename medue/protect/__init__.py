"""Protection methods under one :class:`Protector` interface, looked up by key in ``PROTECTORS``."""

from __future__ import annotations

from typing import Any

from medue.protect.base import Protector, UnitSpace, project
from medue.protect.conv import ConvProtector
from medue.protect.em import EMProtector
from medue.protect.fields import FieldsProtector
from medue.protect.lines import LinesProtector
from medue.protect.salm import SALMProtector
from medue.protect.salm_samplewise import SampleSALMProtector, salm_perturb
from medue.protect.sem import SEMProtector
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


def from_payload(data: Any) -> Protector:
    """The protector a :meth:`Protector.to_payload` dictionary describes, its state loaded (the file that holds it:
    :mod:`medue.protector_file`).

    Raises:
        ProtectionError: ``data`` is not such a dictionary.
    """
    from medue.errors import ProtectionError
    from medue.protect.base import STATE_FORMAT

    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise ProtectionError(f"not a medue protector (expected format {STATE_FORMAT})")
    protector = build_protector(data["method"], **data["params"])
    protector.load_state(data["state"], data.get("extra", {}))
    protector.fitted = bool(data.get("fitted", True))
    return protector


__all__ = ["PROTECTORS", "ConvProtector", "EMProtector", "FieldsProtector", "LinesProtector", "Protector",
           "SALMProtector", "SEMProtector", "SampleSALMProtector", "T2UEProtector", "UCProtector", "UnitSpace",
           "build_protector", "from_payload", "project", "salm_perturb"]
