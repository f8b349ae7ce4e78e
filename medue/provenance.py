"""Step records, hashes, key fingerprints and environment capture: what makes a release replayable."""

from __future__ import annotations

import functools
import hashlib
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fingerprint_array(array: np.ndarray) -> str:
    """SHA-256 over dtype, shape and C-ordered bytes, so equal fingerprints mean bit-identical arrays."""
    h = hashlib.sha256()
    h.update(str(array.dtype.str).encode())
    h.update(str(array.shape).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def key_fingerprint(key: str) -> str:
    """A public fingerprint of the secret protection key: HMAC-SHA256 of a fixed label, first 16 hex digits.

    The key itself never appears in outputs, logs or MLflow; only this fingerprint does, so an auditor can
    tell whether two releases used the same key without learning it. PBKDF2-HMAC-SHA256 (200,000 iterations)
    makes every guess slow.
    """
    return _slow_fingerprint(key)


@functools.lru_cache(maxsize=8)
def _slow_fingerprint(key: str) -> str:
    # PBKDF2 with many iterations: each guess costs ~0.1 s, so even a short key cannot be brute-forced quickly
    return hashlib.pbkdf2_hmac("sha256", key.encode(), b"medue-key-fingerprint-v2", 200_000).hex()[:16]


@dataclass(frozen=True)
class StepRecord:
    """One processing step applied to a volume, with enough detail to replay it.

    Attributes:
        name: Registry key of the step (e.g. ``"salm"``, ``"read:dicom"``).
        params: Resolved parameters, including the seed actually used. Never the key.
        device: Device the step ran on (``"cpu"``, ``"cuda:0"``) or ``""`` for I/O.
        input_fingerprint: :func:`fingerprint_array` of the input array (``""`` for readers).
        output_fingerprint: Fingerprint of the output array.
        stats: Measured numbers (``linf``, ``fraction_changed``…).
        warnings: Lenient-ingest warnings collected for the audit report.
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    device: str = ""
    input_fingerprint: str = ""
    output_fingerprint: str = ""
    stats: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    medue_version: str = ""
    torch_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"] = dict(self.params)
        d["stats"] = dict(self.stats)
        d["warnings"] = list(self.warnings)
        return d


def capture_environment() -> dict[str, Any]:
    """Versions of Python, medue and the libraries that shape the output, plus determinism flags."""
    from medue._version import __version__

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "medue": __version__,
    }
    from importlib.metadata import PackageNotFoundError, version

    # read from the installed packages' metadata: importing mlflow, monai and SimpleITK only to ask took seconds
    for mod, dist in (("numpy", "numpy"), ("torch", "torch"), ("pydicom", "pydicom"), ("nibabel", "nibabel"),
                      ("SimpleITK", "SimpleITK"), ("skimage", "scikit-image"), ("monai", "monai"),
                      ("mlflow", "mlflow")):
        try:
            env[mod] = version(dist)
        except PackageNotFoundError:  # a missing optional library is recorded as absent, not an error
            env[mod] = None
    try:
        from medue.device import determinism_flags

        env.update(determinism_flags())
    except ImportError:
        pass
    return env
