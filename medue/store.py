"""The whole release on disk for the dataset-level fit: slices streamed in batches, a checkpoint every round, and
several processes (GPUs or machines) through ``torch.distributed``.

The sample-wise min-min loop (:func:`medue.protect.minmin.bilevel_samplewise`) holds one batch of slices at a time.
It reads the slices from a :class:`SliceStore` and keeps the noise of every slice in :class:`DeltaBuffers`; the loop
knows them only as the small protocols of :mod:`medue.protect.minmin` (``RoundCheckpoint``, ``RoundBuffers``,
``ProcessGroup``), so the protection code opens no file:

* :class:`SliceStore`: the release's slices ``(N, 1, H, W)`` as float32 stored units, in memory or in a file written
  once, one item at a time, by :class:`SliceWriter` and read a batch at a time (:class:`RowFile`: ``pread``, no memory
  map), so a release larger than memory is fitted whole, at the exported resolution;
* :class:`DeltaBuffers`: two int16 arrays of the same shape. Round ``r`` reads the deltas of round ``r - 1`` from one
  and writes its own into the other, so a round interrupted half-way never damages the last finished round;
* :class:`FitCheckpoint`: after every round, the surrogate, its optimiser, the generator and the accuracy history
  (``state.pt``), then ``checkpoint.json`` naming the round and its buffer, each written atomically. A fit restarted
  from it continues at the next round and ends with the deltas and surrogate an uninterrupted fit ends with (the
  random draws of each noise batch come from a seed per round and batch, not from a shared stream);
* :class:`World`: the process group of ``torch.distributed`` when one is initialised (``torchrun`` sets it up, see
  ``medue fit``), else one process. The surrogate trains under ``DistributedDataParallel`` (every process draws the
  same batch indices and takes its share, gradients are averaged, batch-norm buffers follow process 0), each process
  updates the noise of its share of the batches (batch ``b`` belongs to process ``b % size``) in the shared buffer
  files, and the accuracy is summed across processes. Process 0 writes the checkpoints. The output folder must be on
  storage all processes see (a cluster's shared file system). A fit is deterministic for a key and a number of
  processes: with ``size`` processes one surrogate step sees ``size`` batches, so results differ between sizes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medue.protect.minmin import MemoryBuffers
from medue.provenance import sha256_file

#: Format tag of ``checkpoint.json``.
CHECKPOINT_FORMAT = "medue.fit_checkpoint/1"


class RowFile:
    """An array ``(N, *row)`` of one dtype in a raw file, read and written a few rows at a time with ``pread`` /
    ``pwrite``: nothing is mapped, so a process holds only the rows it asked for (a memory map would count every page
    it touched in the process's memory, up to the whole release)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any, *, writable: bool = False) -> None:
        self.path = Path(path)
        self.shape = tuple(int(v) for v in shape)
        self.dtype = np.dtype(dtype)
        self.row_items = int(np.prod(self.shape[1:]))
        self.row_bytes = self.row_items * self.dtype.itemsize
        size = self.path.stat().st_size
        if size != self.row_bytes * self.shape[0]:
            raise ValueError(f"{self.path.name}: {size} bytes on disk, expected {self.row_bytes * self.shape[0]} for "
                             f"{self.shape} {self.dtype}")
        self.writable = writable
        self._fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
            self._fd = None

    def __getstate__(self) -> dict[str, Any]:  # reopened, not copied, in another process
        return {"path": self.path, "shape": self.shape, "dtype": self.dtype.str, "writable": self.writable}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["shape"], state["dtype"], writable=state["writable"])  # type: ignore[misc]

    def read(self, index: Any) -> np.ndarray:
        """Rows ``index`` (a slice, or integer indices in any order) as a new array."""
        if isinstance(index, slice):
            start, stop, step = index.indices(self.shape[0])
            if step == 1:
                return self._read_run(start, max(stop - start, 0))
            index = np.arange(start, stop, step)
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        for k, i in enumerate(index):
            out[k] = self._read_run(int(i), 1)[0]
        return out

    def _read_run(self, start: int, count: int) -> np.ndarray:
        buf = bytearray(count * self.row_bytes)
        view, offset = memoryview(buf), start * self.row_bytes
        while view:
            n = os.preadv(self._fd, [view], offset)
            if n <= 0:
                raise OSError(f"{self.path.name}: short read at byte {offset}")
            view, offset = view[n:], offset + n
        return np.frombuffer(buf, dtype=self.dtype).reshape(count, *self.shape[1:])

    def write(self, start: int, rows: np.ndarray) -> None:
        """Rows ``start ..`` from ``rows`` (converted to this file's dtype)."""
        data = memoryview(np.ascontiguousarray(rows, dtype=self.dtype).reshape(-1)).cast("B")
        offset = start * self.row_bytes
        while data:
            n = os.pwrite(self._fd, data, offset)
            data, offset = data[n:], offset + n

    def sync(self) -> None:
        os.fsync(self._fd)

    def to_array(self) -> np.ndarray:
        """The whole file as an array (for small files and tests)."""
        return self.read(slice(None))


def create_row_file(path: Path, shape: tuple[int, ...], dtype: Any) -> RowFile:
    """A zero-filled (sparse) row file of ``shape``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return RowFile(path, shape, dtype, writable=True)


class SliceStore:
    """Slices ``(N, 1, H, W)`` of stored units: a tensor or array in memory, or a float32 :class:`RowFile` on disk.

    Indexing with a slice or an index tensor returns a float32 tensor of those rows only, on ``device``.
    """

    def __init__(self, data: np.ndarray | torch.Tensor | RowFile, device: torch.device | str = "cpu") -> None:
        shape = tuple(data.shape)
        if len(shape) != 4 or shape[1] != 1:
            raise ValueError(f"slices must be shaped (N, 1, H, W), not {shape}")
        self.data = data
        self.device = torch.device(device)

    @classmethod
    def open(cls, path: Path, shape: tuple[int, ...], device: torch.device | str = "cpu") -> SliceStore:
        """The slices :class:`SliceWriter` wrote to ``path``, read a batch at a time."""
        return cls(RowFile(path, shape, np.float32), device)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.data.shape)

    def to(self, device: torch.device | str) -> SliceStore:
        return SliceStore(self.data, device)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(self.data, torch.Tensor):
            rows = self.data[index.to(self.data.device) if isinstance(index, torch.Tensor) else index]
            return rows.to(self.device, torch.float32)
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        rows = self.data.read(index) if isinstance(self.data, RowFile) else self.data[index]
        return torch.from_numpy(np.array(rows, dtype=np.float32)).to(self.device)


class SliceWriter:
    """Appends slices ``(n, 1, H, W)`` to a float32 file, item after item; :meth:`close` gives the store."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "wb")
        self.rows = 0
        self.size: tuple[int, int] | None = None

    def append(self, slices: torch.Tensor) -> None:
        size = tuple(int(v) for v in slices.shape[-2:])
        if self.size is None:
            self.size = size  # type: ignore[assignment]
        elif size != self.size:
            raise ValueError(f"every slice of a store has one size: {self.size}, not {size}")
        self._fh.write(np.ascontiguousarray(slices.detach().cpu().numpy(), dtype=np.float32).tobytes())
        self.rows += int(slices.shape[0])

    def discard(self) -> None:
        """Close and remove the file (nothing readable was written)."""
        self._fh.close()
        self.path.unlink(missing_ok=True)

    def close(self, device: torch.device | str = "cpu") -> SliceStore:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        assert self.size is not None, "no slice was written"
        return SliceStore.open(self.path, (self.rows, 1, *self.size), device)


class DeltaBuffers(MemoryBuffers):
    """Two int16 delta arrays shaped like the slices, as the :class:`RowFile` ``delta0.i16`` / ``delta1.i16`` under
    ``folder`` (created zero-filled, opened as they are when a fit continues): ``read(r, ...)`` gives round ``r``'s
    deltas (``-1``: zeros). The fit's :class:`~medue.protect.minmin.RoundBuffers` on disk.
    """

    names = ("delta0.i16", "delta1.i16")

    def __init__(self, shape: tuple[int, ...], folder: Path, *, keep: bool = False, create: bool = True) -> None:
        self.shape = tuple(int(v) for v in shape)
        self.folder = Path(folder)
        for name in self.names if create else ():  # one process creates them, the others open them
            path = self.folder / name
            if not keep or not path.exists() or path.stat().st_size != 2 * int(np.prod(self.shape)):
                create_row_file(path, self.shape, np.int16)
        self._arrays = [RowFile(self.folder / n, self.shape, np.int16, writable=True) for n in self.names]

    def array(self, round_index: int) -> RowFile:
        """The deltas after round ``round_index`` (int16 ``(N, 1, H, W)`` rows on disk)."""
        return self._arrays[round_index % 2]

    def _rows(self, round_index: int, index: Any) -> np.ndarray:
        return self._arrays[round_index % 2].read(index)

    def _put(self, round_index: int, index: slice, rows: np.ndarray) -> None:
        self._arrays[round_index % 2].write(index.indices(self.shape[0])[0], rows)

    def flush(self) -> None:
        for a in self._arrays:
            a.sync()


@dataclass(frozen=True)
class World:
    """This process's place in the ``torch.distributed`` group (``rank`` 0 of 1 without one)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def sum(self, value: float, device: torch.device) -> float:
        if self.size == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item())

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Batch-norm statistics as process 0 has them (each process updated its own in its training steps)."""
        if self.size > 1:
            import torch.distributed as dist

            for buf in model.buffers():
                dist.broadcast(buf, 0)


class FitCheckpoint:
    """Per-round checkpoint of the sample-wise fit under ``folder``, and the delta buffers beside it.

    Args:
        folder: Where ``state.pt``, ``checkpoint.json`` and the two delta buffers live.
        identity: What the fit depends on (key fingerprint, method, parameters, labels, slice store); a checkpoint
            written for another identity is never continued.
        resume: Continue from the checkpoint found there; ``False`` starts over and replaces it.
        world: The processes sharing the fit (default: this process's ``torch.distributed`` group, if any).

    It is the :class:`~medue.protect.minmin.RoundCheckpoint` of the release path: the fit itself opens no file.
    """

    def __init__(self, folder: Path, identity: dict[str, Any], *, resume: bool = False,
                 world: World | None = None) -> None:
        self.folder = Path(folder)
        #: The processes that share the fit (this process's ``torch.distributed`` group by default).
        self.world = World.current() if world is None else world
        self.identity = identity
        self.resume = resume
        self.resumed_from: int | None = None
        #: Why a checkpoint found there was not continued (``None``: continued, or none found).
        self.not_continued: str | None = None

    @property
    def record(self) -> Path:
        return self.folder / "checkpoint.json"

    def buffers(self, shape: tuple[int, ...]) -> DeltaBuffers:
        """The delta buffers, kept when the checkpoint will be continued; otherwise the old checkpoint is forgotten
        first (so that a fit interrupted before its first round never continues an older one) and the buffers are
        created anew, by process 0 of :attr:`world` while the others wait."""
        world = self.world
        keep = self.load_record(shape) is not None
        if world.rank == 0:
            if not keep:
                self.clear()
            DeltaBuffers(shape, self.folder, keep=keep)
        world.barrier()
        return DeltaBuffers(shape, self.folder, keep=True, create=False)

    def load_record(self, shape: tuple[int, ...]) -> dict[str, Any] | None:
        """The last finished round's record, when it may be continued (same identity and shape, state intact)."""
        if not self.resume or not self.record.exists():
            return None
        try:
            rec = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None
        state = self.folder / "state.pt"
        mine = rec.get("identity") or {}
        differs = sorted(k for k in set(mine) | set(self.identity) if mine.get(k) != self.identity.get(k))
        if rec.get("format") != CHECKPOINT_FORMAT or differs or rec.get("shape") != list(shape):
            self.not_continued = "it belongs to another fit (" + ", ".join(differs or ["slice shape"]) + " differ)"
            return None
        if not state.exists() or sha256_file(state) != rec.get("state_sha256"):
            self.not_continued = "its state.pt is missing or damaged"
            return None
        buffer = self.folder / DeltaBuffers.names[int(rec["round"]) % 2]
        if not buffer.exists() or sha256_file(buffer) != rec.get("buffer_sha256"):
            self.not_continued = f"its delta buffer {buffer.name} is missing or damaged"
            return None
        return rec

    def load(self, shape: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """``(record, state)`` of the last finished round, or ``None`` to start at round 0."""
        rec = self.load_record(shape)
        if rec is None:
            return None
        try:
            state = torch.load(self.folder / "state.pt", map_location="cpu", weights_only=True)
        except Exception as exc:  # damaged bytes raise anything; a pickle is never loaded
            self.not_continued = f"its state.pt holds objects other than tensors ({type(exc).__name__})"
            return None
        self.resumed_from = int(rec["round"])
        return rec, state

    def save(self, round_index: int, shape: tuple[int, ...], state: dict[str, Any]) -> None:
        """Record round ``round_index`` as finished: ``state.pt`` first, then the record that names it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / "state.pt.tmp"
        torch.save(state, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        tmp.replace(self.folder / "state.pt")
        rec = {"format": CHECKPOINT_FORMAT, "round": round_index, "buffer": DeltaBuffers.names[round_index % 2],
               "shape": list(shape), "identity": self.identity, "state_sha256": sha256_file(self.folder / "state.pt"),
               "buffer_sha256": sha256_file(self.folder / DeltaBuffers.names[round_index % 2]),
               "history": state.get("history", [])}
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=2))
        tmp.replace(self.record)

    def clear(self) -> None:
        """Forget the checkpoint (the buffers stay until the next fit overwrites them)."""
        self.record.unlink(missing_ok=True)
        (self.folder / "state.pt").unlink(missing_ok=True)
