"""Pipeline configuration: declarative YAML validated by pydantic models; every problem reported at once.

Only registry keys and plain values are allowed: nothing in a config is imported or evaluated. The models below
(frozen, unknown keys forbidden, strict types: ``"false"`` is not ``false``) check each value's type and range;
what depends on several values or on the protector registry (an override needs a reason *and* a name, a label
table with ``source: table``, each method's own ``protect.params``) is checked beside them, and
:func:`parse_config` reports all of it in one :class:`~medue.errors.InvalidConfigError`, with did-you-mean for
misspelt keys. ``medue config-schema`` prints the models' JSON Schema.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medue.errors import InvalidConfigError
from medue.fidelity.checks import FidelityThresholds
from medue.io import basic_profile
from medue.io.dicom import DEID_POLICIES
from medue.labels import ID_COLUMNS, LABEL_SOURCES
from medue.presets import apply_preset
from medue.records import EfficacyResult, ReleaseRecord

CONFIG_VERSION = 1


#: Marks a field whose value names a place on the site's disks (or a tracking store): such a value may carry PHI (a
#: patient's name in a folder) and never reaches a published or tracked file (:meth:`PipelineConfig.private_fields`).
PRIVATE = {"private": True}


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class KeyConfig(_Section):
    """Where the secret protection key comes from: ``env`` variable first, then ``file``."""

    env: str | None = "MEDUE_KEY"
    file: str | None = Field(None, json_schema_extra=PRIVATE)


class ProtectConfig(_Section):
    """Protection method and how it is fitted.

    ``fit_max_slices``: ``None`` (default) fits on every slice of the release (dataset-level optimisation); a number
    caps the slices held in memory for the fit (the rest get the fitted protector's ``perturb``).
    ``fit_size``: ``None`` (default) fits at the exported resolution; a number area-resizes fit slices to it.
    ``preset``: a named, measured setting (:data:`medue.presets.PRESETS`) that fixes ``method``, ``params`` and the
    fidelity budget, and attaches its measurement as ``report.efficacy_results``.
    ``unit``: ``None`` (default) refuses floating-point images; a number reads a floating-point NIfTI, MetaImage or
    NRRD image as whole multiples of it (1 for CT stored as float HU), so that the budget ``epsilon`` means
    ``epsilon * unit`` in the image's own values; an image whose values are not whole multiples is quarantined,
    never rounded.
    """

    method: str = "lines"
    params: dict[str, Any] = Field(default_factory=dict)
    fit_max_slices: int | None = Field(None, ge=1)
    fit_size: int | None = Field(None, ge=8)
    reversible: bool = False
    unit: float | None = Field(None, gt=0, allow_inf_nan=False)
    preset: str | None = None

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from medue.protect import PROTECTORS

        PROTECTORS.get(value)  # raises with the registered names and a did-you-mean
        return value


class LabelsConfig(_Section):
    """Where each item's class comes from (see :mod:`medue.labels`); ``source: null`` means no labels."""

    source: Literal[LABEL_SOURCES] | None = None  # type: ignore[valid-type]
    table: str | None = Field(None, json_schema_extra=PRIVATE)
    id_column: Literal[ID_COLUMNS] = "path"  # type: ignore[valid-type]
    label_column: str = "label"
    attribute: str | None = None
    include_in_release: bool = False
    #: Fraction of each class kept clean and unreleased (never fitted, never exported), so that
    #: ``medue evaluate --self`` can test attackers trained on the release on the site's own images.
    holdout: float = Field(0.0, ge=0, lt=1)


class FidelityPolicy(_Section):
    """Release thresholds. ``None`` disables a threshold."""

    min_psnr_db: float | None = Field(40.0, ge=0)
    min_ssim: float | None = Field(0.95, ge=-1, le=1)
    max_abs_units: int | None = Field(None, ge=0)
    max_abs_physical: float | None = Field(None, ge=0)
    max_fraction_changed: float | None = Field(None, ge=0, le=1)
    #: Largest drop in a clean-trained model's accuracy on protected vs original images, read from the efficacy
    #: results attached in ``report.efficacy_results`` (see :mod:`medue.fidelity.diagnostic`); ``None`` disables.
    max_diagnostic_accuracy_drop: float | None = Field(0.02, ge=0, le=1)
    #: Fail the run (exit 3) when fewer than this fraction of the exported items meant to carry a pattern carry it
    #: in full (the rest were weakened by the gate); ``None``: report the counts, never fail on them.
    min_protected_fraction: float | None = Field(None, ge=0, le=1)
    override_reason: str | None = None
    override_by: str | None = None
    #: PSNR/SSIM data range: "volume" (original max - min) or "dtype" (stored type's span; for 8-bit images).
    data_range: Literal["volume", "dtype"] = "volume"

    @property
    def thresholds(self) -> FidelityThresholds:
        return FidelityThresholds(min_psnr_db=self.min_psnr_db, min_ssim=self.min_ssim,
                                  max_abs_units=self.max_abs_units, max_abs_physical=self.max_abs_physical,
                                  max_fraction_changed=self.max_fraction_changed, data_range=self.data_range)


class ExecutionConfig(_Section):
    """Where and how the release runs; nothing here changes what is released.

    ``memory_gb``: working memory for the volume tensors, shared by the workers (``None``: half the GPU's free
    memory, or a quarter of the machine's available memory per worker, at most 1 GiB; see
    :func:`medue.device.memory_budget`): volumes larger than it are protected and checked a few slices at a time.
    ``read_ahead``: one worker reads the next volume in a thread while the current one is protected, checked and
    written (``"auto"``: on a GPU, where the compute leaves the CPU free; ``true``/``false``: always/never). It holds
    a second volume in memory, so it is off on a CPU by default.
    """

    device: str = "auto"
    workers: int = Field(1, ge=1)
    backend: Literal["local", "ray"] = "local"
    memory_gb: float | None = Field(None, gt=0)
    read_ahead: bool | Literal["auto"] = "auto"

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


class TrackingConfig(_Section):
    enabled: bool = True
    uri: str | None = Field(None, json_schema_extra=PRIVATE)
    experiment: str = "medue"


class ReportConfig(_Section):
    enabled: bool = True
    efficacy_results: str | None = Field(None, json_schema_extra=PRIVATE)
    max_items_pictured: int = Field(8, ge=0)


class DeidentificationOptions(_Section):
    """What a derived DICOM copy keeps of what the PS3.15 Basic Profile removes (:mod:`medue.io.basic_profile`)."""

    keep_descriptions: bool = False
    keep_private_creators: list[str] = Field(default_factory=list)
    retain: list[Literal["institution_identity", "device_identity"]] = Field(default_factory=list)


class PipelineConfig(_Section):
    """A whole release job. ``base_dir`` is not a setting: it is the config file's folder (see :meth:`resolve`)."""

    name: str = Field(min_length=1)
    input: str = Field(min_length=1, json_schema_extra=PRIVATE)
    output: str = Field(min_length=1, json_schema_extra=PRIVATE)
    version: int = CONFIG_VERSION
    deidentification: Literal[DEID_POLICIES] = "refuse"  # type: ignore[valid-type]
    deidentification_options: DeidentificationOptions = DeidentificationOptions()
    uid_mode: Literal["keyed", "random"] = "keyed"
    uid_root: str | None = None
    key: KeyConfig = KeyConfig()
    labels: LabelsConfig = LabelsConfig()
    protect: ProtectConfig = ProtectConfig()
    fidelity: FidelityPolicy = FidelityPolicy()
    execution: ExecutionConfig = ExecutionConfig()
    tracking: TrackingConfig = TrackingConfig()
    report: ReportConfig = ReportConfig()
    base_dir: str = Field(".", exclude=True)

    @field_validator("version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != CONFIG_VERSION:
            raise ValueError(f"this medue reads config version {CONFIG_VERSION}")
        return value

    @field_validator("uid_root")
    @classmethod
    def _uid_root(cls, value: str | None) -> str | None:
        if value is not None and not (re.fullmatch(r"([1-9]\d*|0)(\.([1-9]\d*|0))*\.", value) and len(value) <= 40):
            raise ValueError("expected your organisation's DICOM UID root ending in '.', at most 40 characters, "
                             "digits and dots only, e.g. '1.2.826.0.1.3680043.10.1234.'")
        return value

    def resolve(self, path: str) -> Path:
        """Resolve a path of the config: relative ones are taken from the config file's folder (``base_dir``)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def input_path(self) -> Path:
        return self.resolve(self.input)

    @property
    def output_path(self) -> Path:
        return self.resolve(self.output)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python")

    @classmethod
    def private_fields(cls) -> set[str]:
        """Dotted names of every field marked :data:`PRIVATE` (paths, the tracking store), found in the models."""
        out: set[str] = set()

        def walk(model: type[BaseModel], prefix: str) -> None:
            for name, field in model.model_fields.items():
                extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
                if extra.get("private"):
                    out.add(prefix + name)
                ann = field.annotation
                if isinstance(ann, type) and issubclass(ann, BaseModel):
                    walk(ann, f"{prefix}{name}.")

        walk(cls, "")
        return out

    def record(self) -> ReleaseRecord:
        """What the audit layer is told about this config (:class:`medue.records.ReleaseRecord`)."""
        private = self.private_fields() | {"key.env"}
        flat: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                flat[prefix] = value

        walk("", self.to_dict())
        return ReleaseRecord(
            name=self.name, config_hash=self.config_hash(), method=self.protect.method,
            public_params={k: v for k, v in flat.items() if k not in private and not any(
                k.startswith(p + ".") for p in private)},
            fidelity_policy=self.to_dict()["fidelity"], deidentification=self.deidentification,
            deidentification_profile=basic_profile.policy_words(**self.deidentification_options.model_dump()),
            uid_mode=self.uid_mode, labels_in_release=self.labels.include_in_release,
            reversible=self.protect.reversible, override_reason=self.fidelity.override_reason,
            override_by=self.fidelity.override_by, max_items_pictured=self.report.max_items_pictured,
            report_enabled=self.report.enabled, tracking_uri=self.tracking.uri,
            tracking_experiment=self.tracking.experiment, output_path=self.output_path)

    def config_hash(self) -> str:
        """Hash of what determines the release's content: not ``execution``, ``tracking`` or ``report``."""
        d = self.to_dict()
        for k in ("execution", "tracking", "report"):
            d.pop(k, None)
        for added_later in ("unit", "preset"):  # at their defaults, the hashes of before stand
            if d.get("protect", {}).get(added_later) is None:
                d.get("protect", {}).pop(added_later, None)
        if d.get("fidelity", {}).get("min_protected_fraction") is None:
            d.get("fidelity", {}).pop("min_protected_fraction", None)
        if d.get("deidentification_options") == DeidentificationOptions().model_dump():
            d.pop("deidentification_options")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def load_efficacy_results(self) -> EfficacyResult | None:
        """The JSON ``medue evaluate`` wrote, named by ``report.efficacy_results``; ``None`` when unset.

        Raises:
            InvalidConfigError: the file named does not exist or is not JSON (exit 2, never a silent "not tested").
        """
        if not self.report.efficacy_results:
            return None
        path = self.resolve(self.report.efficacy_results)
        if not path.is_file():
            raise InvalidConfigError([f"report.efficacy_results: {path} does not exist; give the JSON written by "
                                      "`medue evaluate` or remove the setting"])
        try:
            return EfficacyResult.read(path)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:  # not JSON, or not a result's shape
            raise InvalidConfigError([f"report.efficacy_results: {path} is not a result of `medue evaluate` "
                                      f"({exc}); give the JSON it wrote"]) from exc

    def folder_problems(self) -> list[str]:
        """What is wrong with ``input``/``output`` as folders (`run` refuses, `check` reports): empty when fine."""
        if not self.input_path.exists():
            return [f"input: folder {self.input} does not exist (looked for {self.input_path}: relative paths in a "
                    "config file are taken from the file's folder); fix `input:` or pass --input"]
        if self.output_path.resolve().is_relative_to(self.input_path.resolve()):
            return [f"output {self.output} lies inside input {self.input}: a later run would protect its own "
                    "outputs again; choose an output folder outside the input folder"]
        return []

    def read_labels(self, items: list[Any]) -> Any:
        """Resolve ``labels:`` for discovered items (:class:`medue.labels.ReleaseLabels` or ``None``).

        Raises:
            InvalidConfigError: every labelling problem at once (unknown ids, unlabelled items, one class).
        """
        from medue.labels import resolve_labels

        lc = self.labels
        if not lc.source:
            return None
        labels, problems = resolve_labels(items, root=self.input_path, source=lc.source,
                                          table=self.resolve(lc.table) if lc.table else None,
                                          id_column=lc.id_column, label_column=lc.label_column,
                                          attribute=lc.attribute)
        if problems:
            raise InvalidConfigError(problems, source="labels")
        return labels

    def unit_warning(self) -> str | None:
        """A warning when the budget, in the physical values ``protect.unit`` gives a floating-point image, exceeds
        ``fidelity.max_abs_physical`` (every such image would then fail the gate), else ``None``."""
        limit = self.fidelity.max_abs_physical
        if self.protect.unit is None or limit is None:
            return None
        from medue.protect import build_protector

        try:
            epsilon = float(build_protector(self.protect.method, **self.protect.params).params().get("epsilon", 0))
        except Exception:  # the protector's own validation reports bad params
            return None
        physical = epsilon * self.protect.unit
        if physical <= limit:
            return None
        return (f"protect.unit {self.protect.unit:g} makes the budget epsilon {epsilon:g} units = {physical:g} in the "
                f"image's values, above fidelity.max_abs_physical {limit:g}: the gate will weaken or refuse every "
                f"floating-point image; lower epsilon to {int(limit // self.protect.unit)} or check the unit")

    def key_file_warning(self) -> str | None:
        """A warning when the key comes from a file that other users of the machine can read, else ``None``."""
        if self.key.env and os.environ.get(self.key.env):
            return None
        if not self.key.file:
            return None
        path = self.resolve(self.key.file)
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            return None
        if mode & 0o044:
            return (f"key.file {self.key.file} is readable by other users of this machine (mode {mode:04o}); "
                    f"restrict it with `chmod 600 {path.name}` (or set ${self.key.env}): whoever reads the key can "
                    "reproduce the protection")
        return None

    def read_key(self) -> str:
        """The secret key from ``key.env`` or ``key.file``; raises InvalidConfigError saying how to provide one.

        The key must be strong (:func:`check_key_strength`): the published fingerprint must not let anyone
        recover it by guessing.
        """
        value = os.environ.get(self.key.env, "") if self.key.env else ""
        if value:
            return check_key_strength(value, f"${self.key.env}")
        if self.key.file:
            path = self.resolve(self.key.file)
            if path.is_file():
                text = path.read_text().strip()
                if text:
                    return check_key_strength(text, f"key.file {self.key.file}")
            raise InvalidConfigError([f"key.file {self.key.file!r} is missing or empty; put the site's secret "
                                      f"protection key there or set ${self.key.env}"])
        raise InvalidConfigError([f"no protection key: set the environment variable {self.key.env} or key.file "
                                  "in the config"])


#: Minimum length and number of distinct characters of a protection key.
MIN_KEY_LENGTH, MIN_KEY_DISTINCT = 16, 8
KEY_HOWTO = "make one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\""


def check_key_strength(key: str, where: str) -> str:
    """Return ``key`` or raise InvalidConfigError when it is short or low in entropy (nothing about it is shown)."""
    stripped = key.strip()
    problems = []
    if len(stripped) < MIN_KEY_LENGTH:
        problems.append(f"{where}: the protection key is {len(stripped)} characters; at least {MIN_KEY_LENGTH} are "
                        f"needed so it cannot be guessed from the published fingerprint; {KEY_HOWTO}")
    elif len(set(stripped)) < MIN_KEY_DISTINCT:
        problems.append(f"{where}: the protection key uses only {len(set(stripped))} distinct characters (at least "
                        f"{MIN_KEY_DISTINCT}); {KEY_HOWTO}")
    if problems:
        raise InvalidConfigError(problems)
    return stripped


_SECTIONS: dict[str, type[_Section]] = {
    "key": KeyConfig,
    "labels": LabelsConfig,
    "protect": ProtectConfig,
    "fidelity": FidelityPolicy,
    "execution": ExecutionConfig,
    "tracking": TrackingConfig,
    "report": ReportConfig,
}


def _fields(cls: type[BaseModel]) -> list[str]:
    return [f for f in cls.model_fields if f != "base_dir"]


_EXPECT = {"bool_type": "expected true or false", "int_type": "expected a whole number",
           "float_type": "expected a number", "string_type": "expected a string", "dict_type": "expected a mapping",
           "model_type": "expected a mapping", "model_attributes_type": "expected a mapping",
           "list_type": "expected a list", "finite_number": "NaN or infinity is not a value here; give a number or null"}


def _problem(error: Mapping[str, Any]) -> str:
    """One pydantic error as medue words it: where, what was expected, what was found (and did-you-mean)."""
    loc = tuple(str(p) for p in error["loc"])
    where, kind, value = ".".join(loc), error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        section = loc[0] if len(loc) > 1 else None
        allowed = _fields(_SECTIONS[section]) if section in _SECTIONS else _fields(PipelineConfig)
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        return (f"unknown key {loc[-1]!r} " + (f"in {section}" if section else "at top level")
                + (f" (did you mean {close[0]!r}?)" if close else "") + f"; allowed: {', '.join(sorted(allowed))}")
    if kind == "missing" or (kind == "string_too_short" and where in ("name", "input", "output")):
        example = "my-release" if where == "name" else "path/to/folder"
        return f"{where}: required, e.g. {where}: {example}"
    if kind in _EXPECT:
        found = f"{type(value).__name__} {value!r}" if kind != "finite_number" else repr(value)
        return f"{where}: {_EXPECT[kind]}, got {found}"
    if kind in ("greater_than", "less_than"):
        return f"{where}: must be {'>' if kind == 'greater_than' else '<'} {ctx.get('gt', ctx.get('lt'))}, got {value!r}"
    if kind in ("greater_than_equal", "less_than_equal"):
        ge, le = _bounds(loc)
        span = f"in [{ge:g}, {le:g}]" if ge is not None and le is not None else (
            f">= {ge:g}" if ge is not None else f"<= {le:g}")
        return f"{where}: must be {span}, got {value!r}"
    if kind == "literal_error":
        return f"{where}: expected {ctx.get('expected', '')}, got {value!r}"
    if kind == "value_error":
        return f"{where}: {ctx.get('error', error['msg'])}, got {value!r}"
    return f"{where}: {error['msg']}, got {value!r}"


def _bounds(loc: tuple[str, ...]) -> tuple[float | None, float | None]:
    """The ``ge``/``le`` bounds declared for the field at ``loc``."""
    from annotated_types import Ge, Le

    cls: type[BaseModel] = _SECTIONS[loc[0]] if len(loc) > 1 else PipelineConfig
    info = cls.model_fields[loc[-1]]
    ge = next((m.ge for m in info.metadata if isinstance(m, Ge)), None)
    le = next((m.le for m in info.metadata if isinstance(m, Le)), None)
    return ge, le


def _cross_field_problems(data: Mapping[str, Any]) -> list[str]:
    """Rules over several values, and each method's own parameters: checked on the raw mapping, beside the
    models, so that they are reported together with every type and range problem."""
    from medue.protect import PROTECTORS

    def section(name: str) -> Mapping[str, Any]:
        value = data.get(name)
        return value if isinstance(value, Mapping) else {}

    problems: list[str] = []
    p, lab, f = section("protect"), section("labels"), section("fidelity")
    method, params = p.get("method", "lines"), p.get("params") or {}
    if isinstance(method, str) and method in PROTECTORS and isinstance(params, Mapping):
        problems += _check_protect_params(method, params)
        if getattr(PROTECTORS.get(method), "needs_labels", False) and lab.get("source") is None:
            problems.append(f"protect.method {method!r} is class-wise and needs labels: add a `labels:` section "
                            "(source: table, folder or dicom_attribute; `medue init FOLDER` writes a table to fill "
                            "in), or choose a label-agnostic method (uc)")
    if lab.get("source") == "table" and not lab.get("table"):
        problems.append("labels.table: required with source 'table' (a CSV/TSV file; a relative path is taken from "
                        "the config file's folder)")
    if lab.get("holdout") and lab.get("source") is None:
        problems.append("labels.holdout: a held-out part is drawn per class and needs labels (a `labels.source`)")
    if lab.get("source") == "dicom_attribute" and not lab.get("attribute"):
        problems.append("labels.attribute: required with source 'dicom_attribute' (a DICOM keyword)")
    if bool(f.get("override_reason")) != bool(f.get("override_by")):
        problems.append("fidelity: an override needs both override_reason and override_by")
    if p.get("unit") is not None and f.get("data_range") == "dtype":
        problems.append("fidelity.data_range: 'dtype' measures PSNR/SSIM over a type's whole range, which a float "
                        "image read with protect.unit does not have (the gate would pass any change); use "
                        "'volume' (each image's own max - min)")
    return problems


#: Protector parameters that take more than one type (``blank_class``: true, false or a class index).
MIXED_TYPE_PARAMS = frozenset({"blank_class"})


def _check_protect_params(method: str, params: Mapping[str, Any]) -> list[str]:
    """Every problem with ``protect.params``: unknown names (with the allowed list), types, then ranges."""
    from medue.protect import PROTECTORS, build_protector

    cls = PROTECTORS.get(method)
    defaults = cls().params()
    problems = []
    for k, v in params.items():
        if k not in defaults:
            close = difflib.get_close_matches(str(k), list(defaults), n=1)
            problems.append(f"protect.params: unknown parameter {k!r} for {method!r}"
                            + (f" (did you mean {close[0]!r}?)" if close else "")
                            + f"; allowed: {', '.join(sorted(defaults))}")
            continue
        d = defaults[k]
        if k in MIXED_TYPE_PARAMS:
            continue  # checked by the protector's own constructor below
        if isinstance(d, bool) and not isinstance(v, bool):
            problems.append(f"protect.params.{k}: expected true or false, got {v!r}")
        elif isinstance(d, int) and not isinstance(d, bool) and (not isinstance(v, int) or isinstance(v, bool)):
            problems.append(f"protect.params.{k}: expected a whole number, got {type(v).__name__} {v!r}")
        elif isinstance(d, float) and (not isinstance(v, (int, float)) or isinstance(v, bool) or v != v):
            problems.append(f"protect.params.{k}: expected a number, got {type(v).__name__} {v!r}")
        elif isinstance(d, str) and not isinstance(v, str):
            problems.append(f"protect.params.{k}: expected a string, got {type(v).__name__} {v!r}")
        elif isinstance(d, list) and not isinstance(v, list):
            problems.append(f"protect.params.{k}: expected a list, got {type(v).__name__} {v!r}")
    if problems:
        return problems
    try:
        build_protector(method, **params)
        return []
    except (TypeError, ValueError) as exc:
        whole = f"protect.params for {method!r}: {exc}"
    context = {k: params[k] for k in ("mode",) if k in params}
    for k, v in params.items():  # ranges: each parameter alone (with the mode), so every bad value is reported
        try:
            build_protector(method, **{**context, k: v})
        except (TypeError, ValueError) as exc:
            problems.append(f"protect.params.{k}: {exc}")
    return problems or [whole]


def parse_config(data: Any, *, source: str = "config", base_dir: str | Path = ".") -> PipelineConfig:
    """Validate a loaded mapping and build a :class:`PipelineConfig`, raising with *all* problems found."""
    if not isinstance(data, Mapping):
        raise InvalidConfigError([f"top level must be a mapping of settings, got {type(data).__name__}"], source=source)
    # an empty section (`report:` with nothing under it) reads as null in YAML: the section's defaults
    values = {k: ({} if k in _SECTIONS and v is None else v) for k, v in data.items() if k != "base_dir"}
    values, problems = apply_preset(values)
    if "base_dir" in data:
        problems.append("unknown key 'base_dir' at top level: relative paths are taken from the config file's folder")
    config = None
    try:
        config = PipelineConfig.model_validate({**values, "base_dir": str(base_dir)})
    except ValidationError as exc:
        problems += [_problem(e) for e in exc.errors(include_url=False)]
    problems += _cross_field_problems(values)
    if problems or config is None:
        raise InvalidConfigError(problems, source=source)
    return config


def load_config(path: str | Path, *, overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Read a YAML pipeline config.

    Relative paths in the file (``input``, ``output``, ``labels.table``, ``key.file``, ``report.efficacy_results``)
    are taken from the folder the file is in, so a config works from any current folder. ``overrides`` are values
    given on the command line: make their paths absolute first (the CLI does), since they are the user's, not the
    file's.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidConfigError([f"config file {path} not found"], source=str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InvalidConfigError([f"not valid YAML: {exc}"], source=str(path)) from exc
    if overrides and isinstance(data, dict):
        data = dict(data)
        for k, v in overrides.items():
            data[k] = {**data[k], **v} if isinstance(v, Mapping) and isinstance(data.get(k), Mapping) else v
    return parse_config(data, source=str(path), base_dir=path.resolve().parent)


def config_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a pipeline config, from the models, with each method's ``protect.params``
    and their defaults.

    Editors and CI can validate a YAML config with it before medue runs; :func:`parse_config` (cross-field rules
    and each method's parameter ranges too) stays the authority.
    """
    from medue.protect import PROTECTORS

    schema = PipelineConfig.model_json_schema(mode="validation")
    schema["properties"].pop("base_dir", None)
    schema.update({"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "medue pipeline config",
                   "description": f"medue pipeline configuration, version {CONFIG_VERSION}"})
    methods = {}
    for name in PROTECTORS.keys():
        defaults = PROTECTORS.get(name)().params()
        methods[name] = {"type": "object", "additionalProperties": False,
                         "properties": {k: {"default": v} for k, v in defaults.items()}}
    protect = schema["$defs"]["ProtectConfig"]
    protect["properties"]["method"]["enum"] = sorted(methods)
    protect["allOf"] = [{"if": {"properties": {"method": {"const": m}}},
                         "then": {"properties": {"params": s}}} for m, s in sorted(methods.items())]
    return schema
