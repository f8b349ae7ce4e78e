"""Device selection and seeded generators. The only module that asks torch whether CUDA exists."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from medue.errors import InvalidConfigError


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a :class:`torch.device`.

    ``"auto"`` picks ``cuda`` when a GPU is visible, otherwise ``cpu``. Asking for CUDA on a machine
    without it raises instead of silently falling back.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise InvalidConfigError([f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {spec!r}"]) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidConfigError([f"device {spec!r} requested but torch sees no CUDA GPU; use 'auto' or 'cpu'"])
    return device


def device_count() -> int:
    """Number of visible CUDA devices (0 on CPU-only machines)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any printable parts (key, volume id, …); independent of PYTHONHASHSEED."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``.

    Random numbers are always drawn on the CPU and moved to the device, so a given seed gives the same
    draws on CPU and CUDA (CUDA's own streams differ from the CPU's).
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


def determinism_flags() -> dict[str, Any]:
    """Settings that affect bit-reproducibility, recorded with every run."""
    flags: dict[str, Any] = {
        "torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "torch_num_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        flags["cudnn_deterministic"] = torch.backends.cudnn.deterministic
        flags["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        flags["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return flags
