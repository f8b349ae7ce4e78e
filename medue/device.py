"""Device selection and seeded generators. The only module that asks torch whether CUDA exists."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Iterator

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


def memory_budget(device: torch.device | str, *, memory_gb: float | None = None, workers: int = 1) -> int:
    """Working memory in bytes one worker may use for a volume's tensors (protect, fidelity check).

    ``memory_gb`` (``execution.memory_gb``) when given, shared by the ``workers``; otherwise half the device's free
    memory on a GPU (``torch.cuda.mem_get_info``) and, on the CPU, a quarter of the available physical memory per
    worker, at most 1 GiB. Only how many slices go through at once depends on it, never the result.
    """
    device = torch.device(device)
    if memory_gb is not None:
        return max(int(memory_gb * 2**30) // max(workers, 1), 2**24)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(free // 2 // max(workers, 1), 2**26)
    try:
        import os

        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: a conservative fixed budget
        available = 4 * 2**30
    return int(min(max(available // 4 // max(workers, 1), 2**26), 2**30))


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the block on one torch CPU thread, then restore the count: with several threads the order of float sums
    in a backward pass varies from run to run, so a small fit made inside is the same for a key on every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
