"""Pipeline configuration: declarative YAML parsed once into frozen dataclasses; every problem reported at once.

Only registry keys and plain values are allowed: nothing in a config is imported or evaluated.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from medue.errors import InvalidConfigError
from medue.fidelity.checks import FidelityThresholds
from medue.io.dicom import DEID_POLICIES

CONFIG_VERSION = 1


@dataclass(frozen=True)
class KeyConfig:
    """Where the secret protection key comes from: ``env`` variable first, then ``file``."""

    env: str = "MEDUE_KEY"
    file: str | None = None


@dataclass(frozen=True)
class ProtectConfig:
    """Protection method and how it is fitted.

    ``fit_max_slices``: ``None`` (default) fits on every slice of the release (dataset-level optimisation); a number
    caps the slices held in memory for the fit (the rest get the fitted protector's ``perturb``).
    ``fit_size``: ``None`` (default) fits at the exported resolution; a number area-resizes fit slices to it.
    """

    method: str = "salm"
    params: Mapping[str, Any] = field(default_factory=dict)
    fit_max_slices: int | None = None
    fit_size: int | None = None
    reversible: bool = False


@dataclass(frozen=True)
class LabelsConfig:
    """Where each item's class comes from (see :mod:`medue.labels`); ``source: null`` means no labels."""

    source: str | None = None
    table: str | None = None
    id_column: str = "path"
    label_column: str = "label"
    attribute: str | None = None
    include_in_release: bool = False


@dataclass(frozen=True)
class FidelityPolicy:
    """Release thresholds. ``None`` disables a threshold."""

    min_psnr_db: float | None = 40.0
    min_ssim: float | None = 0.95
    max_abs_units: int | None = None
    max_abs_physical: float | None = None
    max_fraction_changed: float | None = None
    #: Largest drop in a clean-trained model's accuracy on protected vs original images, read from the efficacy
    #: results attached in ``report.efficacy_results`` (see :mod:`medue.fidelity.diagnostic`); ``None`` disables.
    max_diagnostic_accuracy_drop: float | None = 0.02
    override_reason: str | None = None
    override_by: str | None = None
    #: PSNR/SSIM data range: "volume" (original max - min) or "dtype" (stored type's span; for 8-bit images).
    data_range: str = "volume"

    @property
    def thresholds(self) -> FidelityThresholds:
        return FidelityThresholds(min_psnr_db=self.min_psnr_db, min_ssim=self.min_ssim,
                                  max_abs_units=self.max_abs_units, max_abs_physical=self.max_abs_physical,
                                  max_fraction_changed=self.max_fraction_changed, data_range=self.data_range)


@dataclass(frozen=True)
class ExecutionConfig:
    device: str = "auto"
    workers: int = 1
    backend: str = "local"


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None
    experiment: str = "medue"


@dataclass(frozen=True)
class ReportConfig:
    enabled: bool = True
    efficacy_results: str | None = None
    max_items_pictured: int = 8


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    input: str
    output: str
    version: int = CONFIG_VERSION
    deidentification: str = "refuse"
    uid_mode: str = "keyed"
    uid_root: str | None = None
    key: KeyConfig = KeyConfig()
    labels: LabelsConfig = LabelsConfig()
    protect: ProtectConfig = ProtectConfig()
    fidelity: FidelityPolicy = FidelityPolicy()
    execution: ExecutionConfig = ExecutionConfig()
    tracking: TrackingConfig = TrackingConfig()
    report: ReportConfig = ReportConfig()
    base_dir: str = "."

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
        d = asdict(self)
        d["protect"]["params"] = dict(self.protect.params)
        d.pop("base_dir")
        return d

    def config_hash(self) -> str:
        """Hash of what determines the release's content: not ``execution``, ``tracking`` or ``report``."""
        d = self.to_dict()
        for k in ("execution", "tracking", "report"):
            d.pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def load_efficacy_results(self) -> dict[str, Any] | None:
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
            return json.loads(path.read_text())
        except ValueError as exc:
            raise InvalidConfigError([f"report.efficacy_results: {path} is not JSON ({exc})"]) from exc

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


_SECTIONS = {
    "key": KeyConfig,
    "labels": LabelsConfig,
    "protect": ProtectConfig,
    "fidelity": FidelityPolicy,
    "execution": ExecutionConfig,
    "tracking": TrackingConfig,
    "report": ReportConfig,
}


def _fields(cls: type) -> set[str]:
    return {f for f in cls.__dataclass_fields__ if f != "base_dir"}


def _check_type(problems: list[str], where: str, value: Any, types: tuple[type, ...], expect: str) -> None:
    if value is not None and (not isinstance(value, types) or isinstance(value, bool) and bool not in types):
        problems.append(f"{where}: expected {expect}, got {type(value).__name__} {value!r}")


#: Protector parameters that take more than one type (``blank_class``: true, false or a class index).
MIXED_TYPE_PARAMS = frozenset({"blank_class"})


def _check_protect_params(method: str, params: Mapping[str, Any]) -> list[str]:
    """Every problem with ``protect.params``: unknown names (with the allowed list), types, then ranges."""
    import difflib

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
    from medue.protect import PROTECTORS

    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise InvalidConfigError([f"top level must be a mapping of settings, got {type(data).__name__}"], source=source)
    top = _fields(PipelineConfig)
    for k in data:
        if k not in top:
            problems.append(f"unknown key {k!r} at top level; allowed: {', '.join(sorted(top))}")
    for required in ("name", "input", "output"):
        if not data.get(required):
            problems.append(f"{required}: required, e.g. {required}: {'my-release' if required == 'name' else 'path/to/folder'}")
        else:
            _check_type(problems, required, data.get(required), (str,), "a string")
    if data.get("version", CONFIG_VERSION) != CONFIG_VERSION:
        problems.append(f"version: this medue reads config version {CONFIG_VERSION}, got {data.get('version')!r}")
    if data.get("deidentification", "refuse") not in DEID_POLICIES:
        problems.append(f"deidentification: expected one of {', '.join(DEID_POLICIES)}, got {data.get('deidentification')!r}")
    if data.get("uid_mode", "keyed") not in ("keyed", "random"):
        problems.append(f"uid_mode: expected 'keyed' or 'random', got {data.get('uid_mode')!r}")
    root = data.get("uid_root")
    if root is not None and not (isinstance(root, str) and re.fullmatch(r"([1-9]\d*|0)(\.([1-9]\d*|0))*\.", root)
                                 and len(root) <= 40):
        problems.append(f"uid_root: expected your organisation's DICOM UID root ending in '.', at most 40 "
                        f"characters, digits and dots only, e.g. '1.2.826.0.1.3680043.10.1234.'; got {root!r}")

    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        raw = data.get(name, {}) or {}
        if not isinstance(raw, Mapping):
            problems.append(f"{name}: expected a mapping, got {type(raw).__name__}")
            continue
        allowed = _fields(cls)
        for k in raw:
            if k not in allowed:
                problems.append(f"unknown key {k!r} in {name}; allowed: {', '.join(sorted(allowed))}")
        sections[name] = {k: v for k, v in raw.items() if k in allowed}

    p = sections.get("protect", {})
    method = p.get("method", "salm")
    params = p.get("params", {}) or {}
    if method not in PROTECTORS:
        try:
            PROTECTORS.get(str(method))
        except Exception as exc:  # UnknownComponentError text carries the did-you-mean
            problems.append(f"protect.method: {exc}")
    elif not isinstance(params, Mapping):
        problems.append(f"protect.params: expected a mapping, got {type(params).__name__}")
    else:
        problems += _check_protect_params(method, params)
    for k, lo in (("fit_max_slices", 1), ("fit_size", 8)):
        v = p.get(k)
        _check_type(problems, f"protect.{k}", v, (int,), "an integer or null")
        if isinstance(v, int) and v < lo:
            problems.append(f"protect.{k}: must be >= {lo}, got {v}")
    _check_type(problems, "protect.reversible", p.get("reversible"), (bool,), "true or false")

    lab = sections.get("labels", {})
    from medue.labels import ID_COLUMNS, LABEL_SOURCES

    if lab.get("source") is not None and lab.get("source") not in LABEL_SOURCES:
        problems.append(f"labels.source: expected one of {', '.join(LABEL_SOURCES)} or null, got {lab.get('source')!r}")
    if lab.get("source") == "table" and not lab.get("table"):
        problems.append("labels.table: required with source 'table' (a CSV/TSV file; a relative path is taken from the config file's folder)")
    if lab.get("source") == "table" and lab.get("id_column", "path") not in ID_COLUMNS:
        problems.append(f"labels.id_column: expected one of {', '.join(ID_COLUMNS)}, got {lab.get('id_column')!r}")
    if lab.get("source") == "dicom_attribute" and not lab.get("attribute"):
        problems.append("labels.attribute: required with source 'dicom_attribute' (a DICOM keyword)")
    _check_type(problems, "labels.include_in_release", lab.get("include_in_release"), (bool,), "true or false")
    if (method in PROTECTORS and getattr(PROTECTORS.get(method), "needs_labels", False)
            and lab.get("source") is None):
        problems.append(f"protect.method {method!r} is class-wise and needs labels: add a `labels:` section")

    f = sections.get("fidelity", {})
    for k in ("min_psnr_db", "min_ssim", "max_abs_physical", "max_fraction_changed", "max_diagnostic_accuracy_drop"):
        _check_type(problems, f"fidelity.{k}", f.get(k), (int, float), "a number or null")
    _check_type(problems, "fidelity.max_abs_units", f.get("max_abs_units"), (int,), "an integer or null")
    if isinstance(f.get("min_ssim"), (int, float)) and not -1 <= f["min_ssim"] <= 1:
        problems.append(f"fidelity.min_ssim: must be in [-1, 1], got {f['min_ssim']}")
    for k in ("max_fraction_changed", "max_diagnostic_accuracy_drop"):
        if isinstance(f.get(k), (int, float)) and not 0 <= f[k] <= 1:
            problems.append(f"fidelity.{k}: must be in [0, 1], got {f[k]}")
    for k in ("min_psnr_db", "max_abs_units", "max_abs_physical"):
        if isinstance(f.get(k), (int, float)) and f[k] < 0:
            problems.append(f"fidelity.{k}: must be >= 0, got {f[k]}")
    if f.get("data_range", "volume") not in ("volume", "dtype"):
        problems.append(f"fidelity.data_range: expected 'volume' or 'dtype', got {f.get('data_range')!r}")
    for k in ("min_psnr_db", "min_ssim", "max_abs_physical", "max_fraction_changed", "max_diagnostic_accuracy_drop"):
        if isinstance(f.get(k), float) and f[k] != f[k]:
            problems.append(f"fidelity.{k}: NaN is not a threshold; give a number or null")
    if bool(f.get("override_reason")) != bool(f.get("override_by")):
        problems.append("fidelity: an override needs both override_reason and override_by")

    r = sections.get("report", {})
    _check_type(problems, "report.enabled", r.get("enabled"), (bool,), "true or false")
    _check_type(problems, "report.efficacy_results", r.get("efficacy_results"), (str,), "a path or null")
    _check_type(problems, "report.max_items_pictured", r.get("max_items_pictured"), (int,), "a whole number")
    t = sections.get("tracking", {})
    _check_type(problems, "tracking.enabled", t.get("enabled"), (bool,), "true or false")
    for k in ("uri", "experiment"):
        _check_type(problems, f"tracking.{k}", t.get(k), (str,), "a string")
    k_ = sections.get("key", {})
    for k in ("env", "file"):
        _check_type(problems, f"key.{k}", k_.get(k), (str,), "a string")

    e = sections.get("execution", {})
    if e.get("backend", "local") not in ("local", "ray"):
        problems.append(f"execution.backend: expected 'local' or 'ray', got {e.get('backend')!r}")
    _check_type(problems, "execution.workers", e.get("workers"), (int,), "an integer")
    if isinstance(e.get("workers"), int) and e["workers"] < 1:
        problems.append(f"execution.workers: must be >= 1, got {e['workers']}")
    dev = e.get("device", "auto")
    if not (dev in ("auto", "cpu", "cuda") or (isinstance(dev, str) and dev.startswith("cuda:") and dev[5:].isdigit())):
        problems.append(f"execution.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {dev!r}")

    if problems:
        raise InvalidConfigError(problems, source=source)
    built = {name: cls(**sections.get(name, {})) for name, cls in _SECTIONS.items()}
    top_values = {k: data[k] for k in ("name", "input", "output", "version", "deidentification", "uid_mode",
                                               "uid_root") if k in data}
    return PipelineConfig(**top_values, **built, base_dir=str(base_dir))


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


def _json_type(annotation: Any) -> dict[str, Any]:
    """JSON Schema of a field annotation as written in this module (``str | None``, ``Mapping[str, Any]``...)."""
    text = str(annotation).replace("typing.", "")
    nullable = "None" in text
    base = text.replace(" | None", "").replace("Optional[", "").strip()
    if base.startswith(("Mapping", "dict")):
        schema: dict[str, Any] = {"type": "object"}
    elif base.startswith(("tuple", "list", "Sequence")):
        schema = {"type": "array"}
    else:
        schema = {"type": {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(base, "string")}
    if nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


def _section_schema(cls: type) -> dict[str, Any]:
    from dataclasses import MISSING, fields

    props: dict[str, Any] = {}
    for f in fields(cls):
        if f.name == "base_dir":
            continue
        if f.name in _SECTIONS:
            props[f.name] = _section_schema(_SECTIONS[f.name])
            continue
        entry = _json_type(f.type)
        if f.default is not MISSING and isinstance(f.default, (str, int, float, bool, type(None))):
            entry["default"] = f.default
        props[f.name] = entry
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def config_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a pipeline config, with each method's ``protect.params`` and their defaults.

    Editors and CI can validate a YAML config with it before medue runs; medue's own validation (every problem
    at once, ranges and cross-field rules) stays the authority.
    """
    from medue.protect import PROTECTORS

    schema = _section_schema(PipelineConfig)
    schema.update({"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "medue pipeline config",
                   "description": f"medue pipeline configuration, version {CONFIG_VERSION}"})
    methods = {}
    for name in PROTECTORS.keys():
        defaults = PROTECTORS.get(name)().params()
        methods[name] = {"type": "object", "additionalProperties": False,
                         "properties": {k: {"default": v} for k, v in defaults.items()}}
    protect = schema["properties"]["protect"]
    protect["properties"]["method"]["enum"] = sorted(methods)
    protect["allOf"] = [{"if": {"properties": {"method": {"const": m}}},
                         "then": {"properties": {"params": s}}} for m, s in sorted(methods.items())]
    return schema
