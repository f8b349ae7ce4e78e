"""Whether a model was trained on a release: a keyed test that needs the site's key and the release's private fit.

A model that learns from a release protected by ``fields`` learns, beside or instead of the anatomy, that the
release's class field means its class. The site holds the key that drew those fields (``private/protector.pt``:
the waves; :mod:`medue.protect.fields`). The test asks the suspect model about probe images (originals of the
release's items, each class's images with another class's field added) and compares its answer with the answers
to the same probes carrying *control* fields of the same family drawn from keys that were never used:

* ``T_k`` = the mean over the probes of the score of the field's class (its log-odds when the model returns
  probabilities, whether it is the top-1 label when it returns labels only), for the release's field (``k = 0``)
  and ``K`` control fields;
* under the null hypothesis (the model never learned this site's fields) the release's field is one more draw of the
  same family, so ``T_0`` is exchangeable with the controls; the p-value is that of ``T_0`` as a new draw from the
  controls' distribution (Student's t prediction interval, ``K - 1`` degrees of freedom), and the rank of ``T_0``
  among them is reported beside it (exact, at best ``1 / (K + 1)``).

The test is a measurement of learned keyed content, after the dataset-ownership verification line of work
(radioactive data, Sablayrolles et al. ICML 2020: a keyed mark with a null distribution from random keys; backdoor
watermark verification, Li et al. NeurIPS 2022: a paired hypothesis test on the suspect model's outputs). Ours: the
mark is the protection itself (no extra change to the release), the controls are fields of the same family, and the
probe is the release's own images. What it costs and how often it detects which attacker is in
``benchmarks/results/`` (``verify_power_*``).

A setting whose pattern is not drawn from the key (the default ``lines``: every lines release carries the same
lines; ``fields`` with one fixed period, whose key draws only a phase a network does not learn) is verified as a
*setting*: the controls are the release's own class patterns changed in what the setting fixes (lines turned to
orientations between the classes', on the same placement at the same strength; fields at a frequency 1.6-2.5 times
lower or higher along the same orientation), which a model that learned "this pattern means this class" answers less
than the release's. Such a result proves the model was trained on data protected with that setting (this release,
or another made with it; or, measured, another medue setting that codes the same class with the same orientation),
not which site's: :attr:`VerifyResult.claim` is ``"setting"`` and the sentence says so. A sample-wise method (``em``,
``salm-samplewise``, ...) or an optimised tile cannot be verified: :func:`verify` says so.

Suspect models receive ``(N, 1, H, W)`` float32 images in ``[0, 1]``: 8-bit stored values divided by 255, other
types mapped by each image's 0.5-99.5 percentile span (medue's model space), clipped.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from medue.device import derive_seed, make_generator
from medue.errors import InvalidConfigError
from medue.protect.base import UnitSpace

#: Control fields per verification and probe images: (1 + 19) x 100 = 2,000 queries.
CONTROLS, PROBES = 19, 100
#: Seeds of the control keys: fixed and public (they are keys nobody used), never the site's.
CONTROL_LABEL = "medue-verify-control"

Suspect = Callable[[np.ndarray], np.ndarray]


class NotVerifiable(ValueError):
    """The release's method places no keyed class field: a key proves nothing about it."""


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """The outcome of one verification (JSON-ready by :meth:`to_dict`)."""

    detected: bool
    p_value: float
    rank_p_value: float
    statistic: float
    release_score: float
    control_mean: float
    control_sd: float
    mode: str
    alpha: float
    probes: int
    controls: int
    queries: int
    seconds: float
    method: str
    amplify: float
    claim: str = "key"

    @property
    def sentence(self) -> str:
        what = "top-1 labels" if self.mode == "labels" else "class probabilities"
        kind = "never-used fields" if self.claim == "key" else "control copies of its patterns (turned or rescaled)"
        counts = (f"(p = {self.p_value:.2g}, alpha {self.alpha:g}; {self.queries} queries of its {what})")
        if self.detected:
            if self.claim == "key":
                return (f"The model was trained on this release (or on data carrying its keyed fields): it answers "
                        f"the release's fields more than {self.controls} {kind} {counts}.")
            return (f"The model was trained on data protected with this release's setting ({self.method}): it answers "
                    f"the release's class patterns more than {self.controls} {kind} {counts}. The setting's "
                    "patterns are the same in every release made with it, so this does not tell this site's release "
                    "from another site's of the same setting.")
        return (f"No evidence that the model was trained on this release: it answers the release's patterns no more "
                f"than {self.controls} {kind} {counts}. This does not prove it was not: see the measured power.")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sentence"] = self.sentence
        return d


def load_suspect(spec: str | Path, device: str | torch.device = "cpu") -> Suspect:
    """A suspect model as a function of ``(N, 1, H, W)`` images in ``[0, 1]`` to ``(N, C)`` probabilities or ``(N,)``
    labels: a TorchScript file (its logits are turned into probabilities), an ONNX file (needs ``onnxruntime``) or
    ``module:function`` (a Python callable that takes and returns NumPy arrays, black-box)."""
    text = str(spec)
    path = Path(text)
    if path.is_file() and path.suffix == ".onnx":
        try:
            import onnxruntime
        except ImportError:
            raise InvalidConfigError([f"--model {text}: an ONNX model needs onnxruntime (pip install onnxruntime); "
                                      "or export the model as TorchScript"], source="verify") from None
        session = onnxruntime.InferenceSession(text)
        name = session.get_inputs()[0].name

        def run_onnx(x: np.ndarray) -> np.ndarray:
            return _probabilities(np.asarray(session.run(None, {name: x.astype(np.float32)})[0]))

        return run_onnx
    if path.is_file():
        try:
            model = torch.jit.load(text, map_location=device).eval()
        except Exception as exc:  # a damaged or foreign file raises anything
            raise InvalidConfigError([f"--model {text}: not a TorchScript model ({type(exc).__name__}); give a "
                                      "TorchScript (.pt) or ONNX (.onnx) file, or module:function"],
                                     source="verify") from None

        @torch.no_grad()
        def run_torch(x: np.ndarray) -> np.ndarray:
            out = model(torch.from_numpy(x).to(device))
            return _probabilities(out.float().cpu().numpy())

        return run_torch
    if ":" in text and not path.exists():
        module, _, attr = text.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise InvalidConfigError([f"--model {text}: cannot import {attr!r} from {module!r} ({exc}); give "
                                      "module:function importable here, or a model file"], source="verify") from None
        return lambda x: np.asarray(fn(x))
    raise InvalidConfigError([f"--model {text}: no such file; give a TorchScript (.pt) or ONNX (.onnx) file, or "
                              "module:function"], source="verify")


def _probabilities(out: np.ndarray) -> np.ndarray:
    """Logits or probabilities ``(N, C)`` as probabilities; labels ``(N,)`` unchanged."""
    if out.ndim == 1:
        return out
    if np.all(out >= 0) and np.allclose(out.sum(1), 1.0, atol=1e-3):
        return out
    from scipy.special import softmax

    return softmax(out, axis=1)


def _is_placed_lines(protector: Any) -> bool:
    """Whether ``protector`` places fixed class gratings (``lines`` and its settings): class-wise, unoptimised, from
    the grating start, a tile of whole pixels."""
    from medue.protect.em import EMProtector

    return (isinstance(protector, EMProtector) and protector.mode == "classwise" and protector.init == "grating"
            and protector.settings.max_rounds == 0 and protector.tile > 1 and protector.fine_ratio == 0
            and protector.class_noise is not None)


def check_verifiable(protector: Any) -> str:
    """What a verification of ``protector``'s release can prove: ``"key"`` (its class fields are drawn from the key:
    this site's release), ``"setting"`` (its class pattern is the same in every release of its setting: a release
    of this setting, not which site's), or raise :class:`NotVerifiable`, saying why."""
    from medue.protect.fields import FieldsProtector

    if isinstance(protector, FieldsProtector):
        keyed = protector.components > 1 or protector.periods[0] != protector.periods[1] or protector.jitter_deg > 0
        return "key" if keyed else "setting"
    if _is_placed_lines(protector):
        return "setting"
    raise NotVerifiable(
        f"method {protector.key!r} cannot be verified: it places no class pattern a model could be asked about "
        "(verification needs a class-wise placed pattern: the default lines, or fields)")


def _class_count(protector: Any) -> int:
    patterns = getattr(protector, "waves", None)
    return int((patterns if patterns is not None else protector.class_noise).shape[0])


def _setting_control(protector: Any, j: int) -> Any:
    """Control ``j`` of a setting whose pattern is not keyed, drawn from a public control seed.

    * lines: the release's class gratings turned to an orientation between the classes' (``pi / (2 C)`` +-
      ``pi / (6 C)``, either side), with a new phase: lines of the same period, width, placement and strength;
    * fields: the release's class fields at another frequency, 1.6-2.5 times lower or higher (either side, so a
      model's preference for coarser or finer stripes cancels), with a new phase, along the same orientation (a
      network's preference for stripes along the image axes, measured in clean models, would otherwise read as a
      mark).
    """
    from medue.protect.fields import FieldsProtector

    gen = make_generator(derive_seed(CONTROL_LABEL, "turn", j))
    r = torch.rand(3, generator=gen)
    sign = 1 if r[1] < 0.5 else -1
    if isinstance(protector, FieldsProtector):
        other = FieldsProtector(**protector.params())
        waves = protector.waves.clone()
        waves[..., 0] *= math.exp(sign * (math.log(1.6) + float(r[0]) * (math.log(2.5) - math.log(1.6))))
        waves[..., 2] = 2 * math.pi * torch.rand(waves.shape[:-1], generator=gen)
        other.waves, other.fitted = waves, True
        return other
    classes = _class_count(protector)
    offset = (math.pi / (2 * classes) + (2 * float(r[0]) - 1) * math.pi / (6 * classes)) * sign
    return _TurnedLines(protector, offset, float(r[2]))


class _TurnedLines:
    """A placed-lines protector whose class gratings are turned by ``offset`` radians and shifted by ``phase`` periods:
    lines one pixel wide every ``period`` px (default: the release's ``tile``) on the same placement, at the same
    strength."""

    def __init__(self, protector: Any, offset: float, phase: float, period: int | None = None) -> None:
        self.protector, self.offset, self.phase = protector, offset, phase
        self.period = int(period or protector.tile)

    def perturb(self, x_units: torch.Tensor, labels: torch.Tensor, space: UnitSpace, *,
                generator: torch.Generator) -> torch.Tensor:
        import copy

        p = self.protector
        classes, (h, w) = int(p.class_noise.shape[0]), x_units.shape[-2:]
        v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                              indexing="ij")
        noise = torch.zeros(classes, 1, h, w)
        for k in range(classes):
            if float(p.class_noise[k].abs().max()) == 0:
                continue  # the blank class stays blank
            angle = math.pi * k / classes + self.offset
            phase = (u * math.cos(angle) + v * math.sin(angle)) / self.period + self.phase
            noise[k, 0] = torch.where(torch.remainder(phase, 1.0) < 1.0 / self.period, 1.0, 0.0) \
                * float(p.class_noise[k].max())
        turned = copy.copy(p)
        turned.class_noise = noise.to(x_units.device)
        return turned.perturb(x_units, labels, space, generator=generator)


def control_protectors(protector: Any, count: int) -> list[Any]:
    """``count`` controls for ``protector``'s release (each with ``perturb``): for a keyed setting, protectors of the
    same setting fitted with never-used keys; for a setting whose pattern is not keyed, its patterns turned to other
    orientations or rescaled (:func:`_setting_control`). :func:`check_verifiable` first."""
    from medue.protect.fields import FieldsProtector

    if check_verifiable(protector) == "setting":
        return [_setting_control(protector, j) for j in range(count)]
    classes = int(protector.waves.shape[0])
    out = []
    for j in range(count):
        other = FieldsProtector(**protector.params())
        other.fit(torch.zeros(classes, 1, 1, 1), torch.arange(classes), None,
                  generator=make_generator(derive_seed(CONTROL_LABEL, j)), return_delta=False)
        out.append(other)
    return out


def model_space(x_units: torch.Tensor, space: UnitSpace, eight_bit: bool) -> torch.Tensor:
    """What a suspect model is shown (see the module docstring)."""
    return (x_units / 255.0 if eight_bit else space.to_model(x_units)).clamp(0, 1)


def keyed_test(suspect: Suspect, images: list[np.ndarray], labels: list[int], protector: Any, *,
               controls: int = CONTROLS, amplify: float = 1.0, alpha: float = 0.01, labels_only: bool = False,
               batch: int = 256) -> VerifyResult:
    """Run the keyed test (module docstring) on probe ``images`` (stored units, 2D each) of classes ``labels``.

    Each probe of class ``c`` carries the field of the next class that has one (``(c + 1) mod C``, skipping a blank
    class) and ``controls`` control fields of that class.
    """
    from scipy import stats

    t0 = time.perf_counter()
    claim = check_verifiable(protector)
    classes = _class_count(protector)
    fielded = [c for c in range(classes) if not protector.unchanged_label(c)]
    others = control_protectors(protector, controls)
    rows, targets = [], []
    for img, c in zip(images, labels):
        candidates = [t for t in fielded if t != c]
        if not candidates:
            continue
        rows.append(img)
        targets.append(min(candidates, key=lambda t: (t - c) % classes))
    if not rows:
        raise InvalidConfigError(["no probe image: verification needs images of a class other than a patterned "
                                  "class's"], source="verify")
    eight_bit = all(np.asarray(r).dtype == np.uint8 for r in rows)
    scores = np.zeros(controls + 1)
    mode = "labels" if labels_only else ""
    queries = 0
    step = max(1, batch // (controls + 1))
    groups: dict[tuple[int, ...], list[int]] = {}  # probes of one image size go to the model together
    for i, r in enumerate(rows):
        groups.setdefault(tuple(np.asarray(r).shape), []).append(i)
    chunks = [idx[k:k + step] for idx in groups.values() for k in range(0, len(idx), step)]
    for chunk_idx in chunks:
        chunk = [rows[i] for i in chunk_idx]
        tgt = torch.tensor([targets[i] for i in chunk_idx])
        x = torch.from_numpy(np.stack([np.asarray(r, dtype=np.float32) for r in chunk]))[:, None]
        lo, hi = np.percentile(x.numpy(), [0.5, 99.5], axis=(1, 2, 3))
        valid = (0.0, 255.0) if eight_bit else (float(x.min()), float(x.max()))
        space = UnitSpace(torch.tensor(lo).view(-1, 1, 1, 1).float(),
                          torch.tensor(np.maximum(hi - lo, 1.0)).view(-1, 1, 1, 1).float(), *valid)
        gen = make_generator(0)
        views = []
        for p in (protector, *others):
            delta = p.perturb(x, tgt, space, generator=gen) * amplify
            views.append(model_space((x + torch.round(delta)).clamp(space.lo, space.hi), space, eight_bit))
        out = suspect(torch.cat(views).numpy().astype(np.float32))
        queries += len(out)
        if not mode:
            mode = "labels" if np.asarray(out).ndim == 1 else "probabilities"
        out = np.asarray(out)
        n = len(chunk)
        for k in range(controls + 1):
            part = out[k * n:(k + 1) * n]
            if mode == "labels":
                pred = part if part.ndim == 1 else part.argmax(1)
                scores[k] += float((pred == tgt.numpy()).sum())
            else:
                pt = np.clip(part[np.arange(n), tgt.numpy()], 1e-6, 1 - 1e-6)
                scores[k] += float(np.log(pt / (1 - pt)).sum())
    scores /= len(rows)
    release, ctrl = scores[0], scores[1:]
    mean, sd = float(ctrl.mean()), float(ctrl.std(ddof=1)) if controls > 1 else 0.0
    if sd > 0:
        statistic = (release - mean) / (sd * math.sqrt(1 + 1 / controls))
        p_value = float(stats.t.sf(statistic, df=controls - 1))
    else:
        statistic = math.inf if release > mean else 0.0
        p_value = 1 / (controls + 1) if release > mean else 1.0
    rank_p = float((1 + np.sum(ctrl >= release)) / (controls + 1))
    return VerifyResult(detected=p_value < alpha, p_value=p_value, rank_p_value=rank_p, statistic=float(statistic),
                        release_score=float(release), control_mean=mean, control_sd=sd, mode=mode, alpha=alpha,
                        probes=len(rows), controls=controls, queries=queries,
                        seconds=round(time.perf_counter() - t0, 2), method=protector.key, amplify=amplify,
                        claim=claim)


def probe_set(output: Path, key: str, count: int, float_unit: float | None = None,
              classes: list[int] | None = None) -> tuple[list[np.ndarray], list[int]]:
    """``count`` original images (the middle slice of each item) of the release's labelled items (of ``classes``
    only, when given), drawn with the key, balanced over the classes, read from the site's input index
    (``private/inputs.local.json``)."""
    from medue.io import InputItem, read_item
    from medue.layout import OutputLayout

    private = OutputLayout(output).private
    inputs = json.loads((private / "inputs.local.json").read_text())
    labels = json.loads((private / "labels.local.json").read_text())["by_item"]
    ids = sorted(i for i in inputs if i in labels and labels[i] is not None
                 and (classes is None or int(labels[i]) in classes))
    rng = np.random.default_rng(derive_seed(key, "verify-probes"))
    by_class: dict[int, list[str]] = {}
    for i in rng.permutation(ids):
        by_class.setdefault(int(labels[i]), []).append(str(i))
    per_class = max(1, count // max(len(by_class), 1))
    images, classes = [], []
    for c, members in sorted(by_class.items()):
        for item_id in members[:per_class]:
            entry = inputs[item_id]
            volume = read_item(InputItem(entry["kind"], tuple(entry["paths"]), item_id), deidentification="ignore",
                               float_unit=float_unit)
            images.append(np.asarray(volume.array[volume.array.shape[0] // 2]))
            classes.append(c)
    return images, classes


def verify(output: str | Path, model: str | Path | Suspect, key: str, *, probes: int = PROBES,
           controls: int = CONTROLS, amplify: float = 1.0, alpha: float = 0.01, labels_only: bool = False,
           device: str = "cpu", float_unit: float | None = None) -> VerifyResult:
    """Whether ``model`` was trained on the release in ``output`` (a ``medue run`` output folder), proven with
    ``key`` (checked against the fit's key fingerprint); ``float_unit``: the release's ``protect.unit`` (its
    floating-point originals are read in whole multiples of it). Raises :class:`NotVerifiable` for a method without a
    class pattern, :class:`~medue.errors.InvalidConfigError` for a wrong key or a missing fit."""
    from medue.layout import OutputLayout
    from medue.protector_file import load_protector
    from medue.provenance import key_fingerprint
    from medue.records import FitRecord

    layout = OutputLayout(Path(output))
    record = FitRecord.read(layout.fit_record)
    problems = []
    if record is None or not layout.protector_state.is_file():
        problems.append(f"{layout.root}: no private fit record (private/protector.json, protector.pt); give the "
                        "output folder of a finished `medue run` at the site")
    elif record.identity.get("key_fingerprint") != key_fingerprint(key):
        problems.append("the key does not match the release's fit (another key's fingerprint): give the site's "
                        "key the release was made with")
    if problems:
        raise InvalidConfigError(problems, source="verify")
    protector = load_protector(layout.protector_state)
    check_verifiable(protector)  # before any image is read
    suspect = model if callable(model) else load_suspect(model, device)
    patterned = [c for c in range(_class_count(protector)) if not protector.unchanged_label(c)]
    asked = [c for c in range(_class_count(protector)) if any(t != c for t in patterned)]
    images, labels = probe_set(layout.root, key, probes, float_unit=float_unit, classes=asked)
    return keyed_test(suspect, images, labels, protector, controls=controls, amplify=amplify, alpha=alpha,
                      labels_only=labels_only)


__all__ = ["CONTROLS", "NotVerifiable", "PROBES", "VerifyResult", "check_verifiable", "control_protectors",
           "keyed_test", "load_suspect", "verify"]
