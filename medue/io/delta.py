"""Reversible release: the delta of a protected volume, stored compressed for authorised partners.

Whoever holds the delta file can restore the original stored values bit-exactly. It is written under the
site-private folder, never beside the public release.

A delta written with the site's key carries a MAC (HMAC-SHA256 under a key derived from the site's key, over every
member): :func:`restore_original` given the key refuses a delta whose MAC does not match, so a delta edited to
"restore" other values (its fingerprints recomputed) is refused. Without the key it cannot be authenticated, and
``medue restore`` says so.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import zipfile
from pathlib import Path

import numpy as np

from medue.errors import ExportError
from medue.io.atomic import write_bytes_atomic
from medue.provenance import fingerprint_array


#: The label the delta MAC key is derived under (never the site's key itself).
MAC_LABEL = b"medue-delta-mac-v1"


def _mac_key(key: str) -> bytes:
    return hmac.new(key.encode(), MAC_LABEL, hashlib.sha256).digest()


def _mac(key: str, arrays: dict[str, np.ndarray]) -> str:
    h = hmac.new(_mac_key(key), digestmod=hashlib.sha256)
    for name in sorted(arrays):
        value = np.asarray(arrays[name])
        h.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


class DeltaAuthenticationError(ExportError):
    """A delta's MAC does not match the key given (edited, or made with another key)."""


def write_delta(original: np.ndarray, protected: np.ndarray, path: str | Path, *,
                float_unit: float | None = None, key: str | None = None) -> Path:
    """Store ``protected - original`` with the shape and both arrays' fingerprints, for bit-exact restoration.

    ``float_unit``: the arrays are whole units of a floating-point image (``protect.unit``); recorded so that the
    restoring side reads the protected file in the same units (:func:`delta_float_unit`).

    The delta is stored dense in the smallest signed type that holds it (int8 for every budget up to 127 units),
    deflated at level 1: a release's delta is mostly zeros and whole periods of one pattern, which the fastest
    level already shrinks 30-100x (a 512x512x300 CT with 1-px lines: 0.45 MB, deflated in about 0.3 s; the earlier
    layout, int64 flat indices and int16 values at numpy's default level, made 17.8 MB and several seconds). Files
    written by earlier versions (``indices`` + ``values``) are still read by :func:`restore_original`.
    """
    diff = protected.astype(np.int32) - original.astype(np.int32)
    peak = int(np.abs(diff).max()) if diff.size else 0
    dtype = next(t for t in (np.int8, np.int16, np.int32) if peak <= np.iinfo(t).max)
    arrays = {"delta": diff.astype(dtype),
              "shape": np.asarray(original.shape), "original_fingerprint": np.asarray(fingerprint_array(original)),
              "protected_fingerprint": np.asarray(fingerprint_array(protected))}
    if float_unit is not None:
        arrays["float_unit"] = np.asarray(float(float_unit))
    if key is not None:
        arrays["mac"] = np.asarray(_mac(key, arrays))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, value in arrays.items():  # the layout of np.savez: one .npy member per array (np.load reads it)
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)
    return write_bytes_atomic(path, buf.getvalue())


def delta_float_unit(path: str | Path) -> float | None:
    """The ``protect.unit`` a delta was written in (a floating-point image), or ``None``."""
    with np.load(path, allow_pickle=False) as data:
        return float(data["float_unit"]) if "float_unit" in data.files else None


def delta_authenticated(path: str | Path) -> bool:
    """Whether the delta carries a MAC (written with the site's key by this version or later)."""
    with np.load(path, allow_pickle=False) as data:
        return "mac" in data.files


def restore_original(protected: np.ndarray, path: str | Path, *, key: str | None = None) -> np.ndarray:
    """Undo the perturbation recorded in ``path``; raises ExportError if ``protected`` is not the array it belongs to,
    and :class:`DeltaAuthenticationError` if ``key`` is given and the delta's MAC does not match it (or it has
    none)."""
    with np.load(path, allow_pickle=False) as data:
        if key is not None:
            members = {name[:-4] if name.endswith(".npy") else name: data[name] for name in data.files}
            mac = str(members.pop("mac", ""))
            if not mac or not hmac.compare_digest(mac, _mac(key, members)):
                raise DeltaAuthenticationError(
                    "the delta is not authentic for this key: " + ("it carries no MAC (written without the key, or "
                                                                   "by an earlier version)" if not mac else
                                                                   "its content or the key differs from the site's"))
        if (tuple(data["shape"]) != protected.shape
                or str(data["protected_fingerprint"]) != fingerprint_array(protected)):
            raise ExportError("delta file does not belong to this protected array (fingerprint mismatch)")
        if "delta" in data.files:
            original = (protected.astype(np.int64) - data["delta"].astype(np.int64)).astype(protected.dtype)
        else:  # the sparse layout of earlier versions
            flat = protected.astype(np.int64).ravel().copy()
            flat[data["indices"]] -= data["values"].astype(np.int64)
            original = flat.reshape(protected.shape).astype(protected.dtype)
        if fingerprint_array(original) != str(data["original_fingerprint"]):
            raise ExportError("restored array does not match the recorded original fingerprint")
    return original
