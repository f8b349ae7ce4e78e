"""Named protection presets: a method, its parameters and the fidelity budget it was measured at, with the result
that measured it.

A preset is a setting of ``protect.preset`` in a pipeline config. It sets ``protect.method``, ``protect.params`` and
the fidelity thresholds it names (a config that also sets one of them differently is refused: the measurement
holds for the preset as measured), and attaches its result as ``report.efficacy_results`` unless the config names
another. The results are release files attacked with the true labels (``medue evaluate``), copied here from
``benchmarks/results/`` so that an installed medue carries them; the report shows them as this release's evidence
only when the release is like the one measured (Br35H, 64 px: see :mod:`medue.evidence`), and as evidence from
Br35H otherwise.

What they buy, on that measurement: every budget stops a plain CNN (0.51); none stops ResNet-18 trained with the
augmentations of MONAI's tutorials or at half resolution (0.95-0.99); the looser budgets stop flip + crop training on
some seeds and not on others (worst seed 0.978 at 38 dB, 0.973 at 36 dB, 0.877 at 34 dB). A looser budget is a
larger, more visible change (PSNR 36 or 34 dB, up to 12 or 16 units) for little more protection.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Preset:
    """One named preset.

    Attributes:
        name: ``protect.preset`` value.
        method: Protection method.
        params: Its parameters (the method's defaults for the rest).
        fidelity: The fidelity thresholds it was measured at.
        evidence: File name (in this package) of the result that measured it.
        words: What it is and what it buys, in one line.
        power: File name (in this package) of the measured power of ``medue verify`` on it, if measured.
    """

    name: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)
    evidence: str = ""
    words: str = ""
    power: str = ""

    @property
    def evidence_path(self) -> Path:
        return HERE / self.evidence

    @property
    def power_path(self) -> Path | None:
        """The measured power of ``medue verify`` on this setting (``benchmarks/verify_power.py``), if any."""
        return HERE / self.power if self.power else None


def _fields_budget(psnr_db: int) -> dict[str, Any]:
    """The fidelity a fields preset was measured at: PSNR (8-bit span) and the largest change gated, SSIM and the
    fraction changed reported, not gated (a smooth field changes most tissue pixels, and SSIM rates it harshly)."""
    return {"min_psnr_db": psnr_db, "max_abs_units": 24, "min_ssim": None, "max_fraction_changed": None,
            "data_range": "dtype"}


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("lines-38db", "lines", {}, {"min_psnr_db": 38, "min_ssim": 0.95, "max_abs_units": 8},
           "lines_38db_br35h_64.json",
           "the default: 1-px lines every 3 px on the flattest 45 % of each image, first class unchanged, "
           "PSNR >= 38 dB, |delta| <= 8; measured under the full attacker suite (2-3 seeds)",
           power="verify_power_lines_38db.json"),
    Preset("lines-36db", "lines", {"epsilon": 12}, {"min_psnr_db": 36, "min_ssim": 0.95, "max_abs_units": 12},
           "lines_36db_br35h_64.json",
           "stronger: the same lines at up to 12 units, PSNR >= 36 dB; measured on four headline attacks "
           "(flip + crop on 3 seeds)"),
    Preset("lines-34db", "lines", {"epsilon": 16}, {"min_psnr_db": 34, "min_ssim": 0.95, "max_abs_units": 16},
           "lines_34db_br35h_64.json",
           "strongest: up to 16 units, PSNR >= 34 dB; measured on four headline attacks plus JPEG and median "
           "(flip + crop on 3 seeds)"),
    Preset("fields-32db", "fields", {"epsilon": 24, "psnr_db": 32, "psnr_range": "dtype"},
           _fields_budget(32),
           "fields_32db_br35h_64.json",
           "low-frequency: a smooth stripe field per class (period 1/4 of the side) on the tissue of every image, "
           "PSNR >= 32 dB (SSIM not gated: measured >= 0.88); a larger change that augmenting attackers keep",
           power="verify_power_fields_32db.json"),
    Preset("fields-29db", "fields", {"epsilon": 24, "psnr_db": 29, "psnr_range": "dtype"},
           _fields_budget(29),
           "fields_29db_br35h_64.json",
           "low-frequency, strongest: the same field at PSNR >= 29 dB (a visible change, up to 24 units)"),
    Preset("fields-32db-keyed", "fields", {"epsilon": 24, "psnr_db": 32, "psnr_range": "dtype",
                                           "periods": [0.1667, 0.3333]},
           _fields_budget(32),
           "fields_32db_keyed_br35h_64.json",
           "verifiable: fields-32db with each class's frequency (3-6 cycles per side) drawn from the key, so that "
           "`medue verify` can prove use; efficacy measured with one key's draw",
           power="verify_power_fields_32db_keyed.json"),
)}


def apply_preset(values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``values`` (a raw config mapping) with its ``protect.preset`` expanded, and the problems found (an unknown
    name, or a setting the preset owns given another value)."""
    protect = values.get("protect")
    if not isinstance(protect, Mapping) or protect.get("preset") is None:
        return dict(values), []
    name = protect["preset"]
    if not isinstance(name, str):
        return dict(values), []  # the config's own check says what a preset is (one name, a string)
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), list(PRESETS), n=1)
        return dict(values), [f"protect.preset: unknown preset {name!r}; expected one of {', '.join(PRESETS)}"
                              + (f" (did you mean {close[0]!r}?)" if close else "")]
    preset = PRESETS[name]
    problems = []
    if protect.get("method", preset.method) != preset.method:
        problems.append(f"protect.method: {protect['method']!r} conflicts with protect.preset {name!r} (method "
                        f"{preset.method!r}); remove one of them")
    if protect.get("params"):
        fixed = preset.params or "the method's defaults"
        problems.append(f"protect.params: a preset fixes the parameters it was measured with ({fixed}); remove "
                        "protect.params, or protect.preset to set them yourself")
    fidelity = values.get("fidelity") if isinstance(values.get("fidelity"), Mapping) else {}
    for key, value in preset.fidelity.items():
        if key in fidelity and fidelity[key] != value:
            problems.append(f"fidelity.{key}: {fidelity[key]!r} conflicts with protect.preset {name!r}, measured at "
                            f"{value!r}; remove fidelity.{key}, or the preset")
    problems += _stricter_limits(name, preset, fidelity)
    out = dict(values)
    out["protect"] = {**protect, "method": preset.method, "params": dict(preset.params)}
    out["fidelity"] = {**fidelity, **preset.fidelity}
    report = values.get("report") if isinstance(values.get("report"), Mapping) else {}
    if report.get("efficacy_results") is None:
        out["report"] = {**report, "efficacy_results": str(preset.evidence_path)}
    return out, problems


#: Fidelity limits that weaken items when stricter than the preset's measured release had them (``min_*``: higher is
#: stricter; ``max_*``: lower is stricter).
LIMITS = ("min_psnr_db", "min_ssim", "max_abs_units", "max_abs_physical", "max_fraction_changed")


def measured_fidelity(preset: Preset) -> dict[str, Any]:
    """The fidelity gate the preset's evidence release ran under (its efficacy JSON's ``config.fidelity``)."""
    import json

    try:
        data = json.loads(preset.evidence_path.read_text())
    except (OSError, ValueError):
        return dict(preset.fidelity)
    return {**((data.get("config") or {}).get("fidelity") or {}), **preset.fidelity}


def _stricter_limits(name: str, preset: Preset, fidelity: Mapping[str, Any]) -> list[str]:
    """Problems for each limit of the site's gate that is stricter than the gate the preset was measured under: it
    would weaken the preset's items back towards weaker pixels, and the attached evidence would not be theirs."""
    measured = measured_fidelity(preset)
    out = []
    for key in LIMITS:
        value = fidelity.get(key)
        if key in preset.fidelity or value is None or not isinstance(value, (int, float)):
            continue  # the preset's own limits are checked above; an unset limit weakens nothing
        then = measured.get(key)
        stricter = then is None or (value > then if key.startswith("min_") else value < then)
        if stricter:
            out.append(f"fidelity.{key}: {value!r} is stricter than protect.preset {name!r} was measured with "
                       f"({'no limit' if then is None else repr(then)}): it would weaken the preset's items, and its "
                       f"evidence would not be theirs; remove fidelity.{key}, or the preset")
    return out


def worst_seed(summary: Mapping[str, Any]) -> float | None:
    """The worst clean-test accuracy of one attack's summary (:func:`medue.evidence.summarise`): its fitted runs'
    worst seed, or an unfit run's when that is higher (it learned that much all the same)."""
    values = [v for v in (summary.get("protected_max"), summary.get("unfit_max")) if v is not None]
    return max(values) if values else None


def verify_power(method: str, preset: str | None = None) -> dict[str, Any] | None:
    """The measured power of ``medue verify`` for ``method`` (the release's preset's, else the first preset of the
    method that has one): true and false positives per attack, as ``benchmarks/verify_power.py`` wrote them."""
    import json

    candidates = [p for p in PRESETS.values() if p.method == method and p.power_path and p.power_path.is_file()]
    candidates.sort(key=lambda p: p.name != preset)
    if not candidates:
        return None
    data = json.loads(candidates[0].power_path.read_text())
    return {**data, "preset": candidates[0].name}


def frontier(method: str) -> list[dict[str, Any]]:
    """The measured price of strength of ``method``: one entry per preset of it, loosest fidelity last, each with
    its fidelity budget, the fidelity measured on its release files and, per attack, the clean baseline and the
    worst seed (its evidence, read from this package)."""
    from medue.evidence import summarise
    from medue.records import EfficacyResult

    out = []
    for preset in PRESETS.values():
        if preset.method != method or not preset.evidence_path.is_file():
            continue
        result = EfficacyResult.read(preset.evidence_path)
        attacks = {s["attack"]: {"clean": s["clean"], "worst": worst_seed(s), "clean_part": s.get("clean_part"),
                                 "runs": s["protected_runs"] + s["unfit_runs"]} for s in summarise(result)}
        out.append({"preset": preset.name, "budget": dict(preset.fidelity),
                    "fidelity": result.extra.get("fidelity") or {}, "attacks": attacks})
    return sorted(out, key=lambda e: -float(e["budget"].get("min_psnr_db") or 0))


__all__ = ["PRESETS", "Preset", "apply_preset", "frontier", "verify_power", "worst_seed"]
