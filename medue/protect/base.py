"""The Protector interface: dataset-level ``fit``, per-sample ``perturb``, and the ``protect`` template for volumes.

All perturbations live in *stored units*: a tensor ``x`` holds the stored integer values as float32, the model
sees ``(x - offset) / scale`` (see :class:`UnitSpace`), and every delta is an integer number of units with
``|delta| <= epsilon`` and ``lo <= x + delta <= hi``. Integer sign steps keep deltas integral throughout, so
nothing is lost when the result is cast back to int16/uint16.
"""

from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from medue.device import make_generator
from medue.errors import InvalidVolumeError, ProtectionError
from medue.provenance import StepRecord, fingerprint_array
from medue.volume import Volume


#: Bytes of working memory per voxel of a slice going through :meth:`Protector.protect` (float32 input, delta,
#: placement masks and their sorting buffers, the projected result): sizes its chunks from a memory budget.
BYTES_PER_VOXEL = 48

#: Format tag of a saved protector (:meth:`Protector.to_payload`, :mod:`medue.protector_file`).
STATE_FORMAT = "medue.protector/1"


@dataclass(frozen=True)
class UnitSpace:
    """How stored units map to the model's input, and which stored values are valid.

    ``offset`` and ``scale`` may be floats or tensors shaped ``(N, 1, 1, 1)`` (one per sample).
    """

    offset: Any
    scale: Any
    lo: float
    hi: float

    def to_model(self, x_units: torch.Tensor) -> torch.Tensor:
        return (x_units - self.offset) / self.scale

    def select(self, index: Any) -> UnitSpace:
        """The space for ``x[index]`` when offset/scale are per-sample tensors."""
        pick = (lambda v: v[index] if isinstance(v, torch.Tensor) and v.ndim > 0 else v)
        return UnitSpace(pick(self.offset), pick(self.scale), self.lo, self.hi)

    def to(self, device: torch.device) -> UnitSpace:
        move = (lambda v: v.to(device) if isinstance(v, torch.Tensor) else v)
        return UnitSpace(move(self.offset), move(self.scale), self.lo, self.hi)

    @classmethod
    def per_sample(cls, spaces: list[UnitSpace], counts: list[int]) -> UnitSpace:
        """One space for slices stacked from several volumes: ``counts[i]`` slices in ``spaces[i]`` each, offset and
        scale per sample, the valid range wide enough for all."""
        def column(values: list[Any]) -> torch.Tensor:
            return torch.tensor([float(v) for v, n in zip(values, counts) for _ in range(n)]).view(-1, 1, 1, 1)

        return cls(column([s.offset for s in spaces]), column([s.scale for s in spaces]),
                   float(min(s.lo for s in spaces)), float(max(s.hi for s in spaces)))

    @classmethod
    def for_volume(cls, volume: Volume) -> UnitSpace:
        """Map a volume's 0.5-99.5 percentile intensity span to [0, 1]; valid range from its stored dtype."""
        lo_p, hi_p = np.percentile(volume.array, [0.5, 99.5])  # on the stored integers: no float copy
        lo, hi = volume.valid_range
        return cls(offset=float(lo_p), scale=float(max(hi_p - lo_p, 1.0)), lo=float(lo), hi=float(hi))


def per_sample_mask(region: Any, x_units: torch.Tensor, space: UnitSpace, ratio: float,
                    chunk: int = 256) -> torch.Tensor:
    """``region(x_model, ratio)`` (a model-space mask such as :func:`medue.protect.masks.flat_region_mask`) over
    ``x_units``, ``chunk`` slices at a time, each slice mapped to model space by its own part of ``space``."""
    return torch.cat([region(space.select(sl).to_model(x_units[sl]), ratio) for sl in batches(x_units.shape[0], chunk)])


def project(delta: torch.Tensor, x_units: torch.Tensor, space: UnitSpace, epsilon: float) -> torch.Tensor:
    """Round to whole units, clip to the L-inf budget, then to the valid stored range."""
    delta = torch.clamp(torch.round(delta), -epsilon, epsilon)
    return torch.clamp(x_units + delta, space.lo, space.hi) - x_units


class Protector(ABC):
    """Base class of all protection methods.

    Args:
        epsilon: L-inf budget in whole stored units (``0`` returns the input unchanged).
        step: Step size of sign-gradient updates, whole stored units (``>= 1``).
        batch_size: Samples per optimisation batch.
        foreground_only: Perturb only the body/foreground (see :func:`medue.protect.masks.foreground_mask`).

    Subclasses implement :meth:`perturb` and, when they learn dataset-level state, :meth:`fit`.
    """

    key: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = False
    #: What the pattern looks like on a released image, in words a board member reads (the report quotes it).
    looks_like: ClassVar[str] = ""

    def __init__(self, *, epsilon: int = 8, step: int = 1, batch_size: int = 64, foreground_only: bool = False) -> None:
        if not isinstance(epsilon, (int, np.integer)) or isinstance(epsilon, bool) or epsilon < 0:
            raise ValueError(f"epsilon must be a whole number of stored units >= 0, not {epsilon!r}")
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 1:
            raise ValueError(f"step must be a whole number of stored units >= 1, not {step!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
        self.epsilon = int(epsilon)
        self.step = int(step)
        self.batch_size = batch_size
        self.foreground_only = bool(foreground_only)
        self.fitted = False

    # --- dataset level -------------------------------------------------------------------------------------
    def fit(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
            generator: torch.Generator, return_delta: bool = True) -> torch.Tensor | None:
        """Learn dataset-level state from ``x_units`` ``(N, 1, H, W)``; return the deltas for these samples.

        ``return_delta=False`` (the release job, for methods whose noise is applied at export) returns ``None`` and
        spares a full-size delta. The default learns nothing and perturbs each sample with :meth:`perturb`.
        """
        self.fitted = True
        return self.perturb(x_units, labels, space, generator=generator) if return_delta else None

    @property
    def streams_fit(self) -> bool:
        """Whether :meth:`fit` takes a :class:`~medue.store.SliceStore` (the release's slices on disk, read
        batch by batch) in place of a tensor, so that a release larger than memory is fitted whole."""
        return False

    def fit_uses_pixels(self, labelled: bool) -> bool:
        """Whether :meth:`fit` reads the release's pixels (``labelled``: every sample has a label).

        A method whose fit uses the labels alone (a placed class pattern, model-free class filters, a generator
        fitted on synthetic images) returns ``False``: the release job then fits it on one stand-in sample per item
        (zeros, shape ``(N, 1, 1, 1)``, their labels) and reads no volume before export, with the same result.
        """
        return True

    @abstractmethod
    def perturb(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
                generator: torch.Generator) -> torch.Tensor:
        """Return integer deltas for ``x_units`` ``(N, 1, H, W)``, same shape, device and dtype."""

    def params(self) -> dict[str, Any]:
        """Resolved constructor parameters, recorded in provenance (never the key)."""
        return {"epsilon": self.epsilon, "step": self.step, "batch_size": self.batch_size,
                "foreground_only": self.foreground_only}

    def unchanged_label(self, label: int | None) -> bool:
        """Whether items of class ``label`` are released unchanged on purpose (none, unless a method says so)."""
        return False

    def inert_params(self) -> frozenset[str]:
        """Parameters that cannot change this protector's output as configured (an optimiser's settings when
        nothing is optimised): a measurement made with other values of these is still this protection's."""
        return frozenset()

    def state_dict(self) -> dict[str, Any]:
        """Learned state (surrogate weights, filters, cluster noise). Empty when nothing is learned."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Learned state that is not a tensor (JSON types only), saved beside :meth:`state_dict`."""
        return {}

    def load_state(self, state: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` and :meth:`extra_state` returned; the protector is then fitted."""
        self.fitted = True

    def to_payload(self) -> dict[str, Any]:
        """Everything a fitted protector is, as tensors plus JSON-typed parameters (what
        :func:`medue.protector_file.save_protector` writes and :func:`medue.protect.from_payload` reads back)."""
        return {"format": STATE_FORMAT, "method": self.key, "params": self.params(),
                "state": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                "extra": self.extra_state(), "fitted": self.fitted}

    def state_fingerprint(self) -> str:
        """SHA-256 of the serialised learned state, recorded so an auditor can match releases to a fit."""
        state = self.state_dict()
        if not state:
            return ""
        buf = io.BytesIO()
        torch.save({k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in sorted(state.items())}, buf)
        return hashlib.sha256(buf.getvalue()).hexdigest()

    @property
    def slice_independent(self) -> bool:
        """Whether :meth:`perturb` treats every slice on its own and draws nothing from the generator, so that a
        volume may go through :meth:`protect` a few slices at a time with the same result (class-wise patterns,
        filters, clusters). Sample-wise optimisation draws random numbers per batch: it gets the whole volume."""
        return False

    @property
    def budget(self) -> float:
        """The L-inf bound :meth:`protect` projects onto, in stored units: ``epsilon`` for every method except one
        published without a norm bound and run that way (``conv`` with ``clip: false``), where it is infinite and
        the fidelity gate alone decides whether the release may go out."""
        return float(self.epsilon)

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise ProtectionError(f"{type(self).__name__} must be fitted first: call fit() on the release's samples")

    # --- volume template ------------------------------------------------------------------------------------
    def protect(self, volume: Volume, *, label: int | None = None, seed: int = 0,
                device: torch.device | str = "cpu", key_fingerprint: str = "",
                delta: np.ndarray | None = None, memory_bytes: int | None = None) -> Volume:
        """Protect every slice of ``volume`` and return a new Volume with a StepRecord appended.

        ``delta`` (same shape as the array) is the noise a dataset-level :meth:`fit` already optimised for this
        volume; without it the delta comes from :meth:`perturb`. Either way the array keeps its dtype and the
        delta is whole stored units within ``epsilon`` and the valid range. ``memory_bytes`` bounds the working
        memory: when the delta is given or the method is :attr:`slice_independent`, the volume goes through a few
        slices at a time (the result is the same for any budget).
        """
        device = torch.device(device)
        if self.needs_labels and label is None and not getattr(self, "label_free_apply", False):
            raise ProtectionError(f"{self.key} needs a label for each volume; give labels in the config "
                                  "or use a label-agnostic method (uc, salm, sem, em with pseudo-labels)")
        array = volume.array
        if array.size == 0:
            raise InvalidVolumeError("cannot protect an empty volume")
        space = UnitSpace.for_volume(volume)
        generator = make_generator(seed)
        fitted = delta is not None
        n, per_slice = array.shape[0], int(np.prod(array.shape[1:]))
        chunk = n
        if memory_bytes is not None and (fitted or self.slice_independent or self.epsilon == 0):
            chunk = int(max(1, min(n, memory_bytes // (BYTES_PER_VOXEL * max(per_slice, 1)))))
        protected = np.empty_like(array)
        info = np.iinfo(array.dtype)
        for sl in batches(n, chunk):
            x = torch.from_numpy(np.asarray(array[sl], dtype=np.float32)).unsqueeze(1).to(device)
            labels = None if label is None else torch.full((x.shape[0],), int(label), dtype=torch.long, device=device)
            if self.epsilon == 0:
                delta_t = torch.zeros_like(x)
            elif fitted:
                assert delta is not None
                delta_t = torch.from_numpy(np.asarray(delta[sl], dtype=np.float32)).reshape(x.shape).to(device)
            else:
                delta_t = self.perturb(x, labels, space, generator=generator)
            delta_t = project(delta_t, x, space, self.budget)
            protected[sl] = np.clip(np.rint((x + delta_t).squeeze(1).cpu().numpy()), info.min, info.max)
            del x, delta_t
        delta = None
        linf, changed, squared = 0, 0, 0.0
        for before, after in zip(array, protected):  # slice by slice: no int64 copy of the whole volume
            diff = after.astype(np.int64) - before.astype(np.int64)
            linf = max(linf, int(np.abs(diff).max()) if diff.size else 0)
            changed += int(np.count_nonzero(diff))
            squared += float((diff.astype(np.float64) ** 2).sum())
        if linf > self.budget:
            raise ProtectionError(f"{self.key}: |delta| {linf} exceeds the budget {self.budget:g} after projection")
        slope, _ = volume.rescale
        stats = {
            "linf_units": linf,
            "linf_physical": float(linf * abs(slope)),
            "fraction_changed": float(changed / array.size),
            "l2_units": float(np.sqrt(squared)),
        }
        from medue._version import __version__

        step = StepRecord(
            name=self.key,
            params={**self.params(), "seed": int(seed), "key_fingerprint": key_fingerprint,
                    "state_fingerprint": self.state_fingerprint(), "labelled": label is not None,
                    "delta_from_fit": fitted},
            device=str(device),
            input_fingerprint=volume.fingerprint,
            output_fingerprint=fingerprint_array(protected),
            stats=stats,
            medue_version=__version__,
            torch_version=torch.__version__,
        )
        return volume.with_array(protected, step)


class BlankClassMixin:
    """For a class-wise pattern whose ``blank_class`` (``false``, ``true`` for the first class, or a class index)
    carries no pattern: that class's items are released unchanged on purpose."""

    blank_class: bool | int

    def _blank(self) -> int | None:
        return None if self.blank_class is False else (0 if self.blank_class is True else int(self.blank_class))

    def unchanged_label(self, label: int | None) -> bool:
        return label is not None and label == self._blank()


def batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


#: Pixels one forward/backward pass of the surrogate may hold (64 slices of 256 x 256; 16 of 512 x 512). A batch of
#: larger slices goes through in passes of fewer rows (:func:`rows_per_pass`), so that the fit's memory does not grow
#: with the slice size: a 512 x 512 batch of 64 in one pass costs about 3 GB of activations with the strided surrogate.
PIXELS_PER_PASS = 64 * 256 * 256


def rows_per_pass(shape: tuple[int, ...] | torch.Size) -> int:
    """How many rows of a batch of ``shape`` ``(N, C, H, W)`` go through the surrogate in one pass."""
    return max(1, min(int(shape[0]), PIXELS_PER_PASS // max(1, int(shape[-2]) * int(shape[-1]))))
