"""Reversible release: the sparse delta of a protected volume, stored compressed for authorised partners.

Whoever holds the delta file can restore the original stored values bit-exactly. It is written under the
site-private folder, never beside the public release.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from medue.errors import ExportError
from medue.io.atomic import write_bytes_atomic
from medue.provenance import fingerprint_array


def write_delta(original: np.ndarray, protected: np.ndarray, path: str | Path) -> Path:
    """Store the non-zero entries of ``protected - original`` (flat indices + int16 values), compressed."""
    diff = protected.astype(np.int64) - original.astype(np.int64)
    idx = np.flatnonzero(diff)
    buf = io.BytesIO()
    np.savez_compressed(buf, indices=idx.astype(np.int64), values=diff.ravel()[idx].astype(np.int16),
                        shape=np.asarray(original.shape), original_fingerprint=np.asarray(fingerprint_array(original)),
                        protected_fingerprint=np.asarray(fingerprint_array(protected)))
    return write_bytes_atomic(path, buf.getvalue())


def restore_original(protected: np.ndarray, path: str | Path) -> np.ndarray:
    """Undo the perturbation recorded in ``path``; raises ExportError if ``protected`` is not the array it belongs to."""
    with np.load(path) as data:
        if tuple(data["shape"]) != protected.shape or str(data["protected_fingerprint"]) != fingerprint_array(protected):
            raise ExportError("delta file does not belong to this protected array (fingerprint mismatch)")
        flat = protected.astype(np.int64).ravel().copy()
        flat[data["indices"]] -= data["values"].astype(np.int64)
        original = flat.reshape(protected.shape).astype(protected.dtype)
        if fingerprint_array(original) != str(data["original_fingerprint"]):
            raise ExportError("restored array does not match the recorded original fingerprint")
    return original
