"""Ray Data as the multi-node engine (optional extra ``medue[ray]``).

Items travel as small dicts of paths (never arrays); a pool of actors calls the same ``process_item`` as the
local executor, so each actor loads the fitted protector once (once per GPU with ``num_gpus=1``). A task that
raises is retried by Ray (``max_restarts``/``max_task_retries``); what still fails comes back as a ``failed``
marker, never as a lost item.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from medue.errors import MissingDependencyError
from medue.io import InputItem
from medue.pipeline.job import FAILED, JobContext, process_item
from medue.records import ItemMarker


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("the Ray backend requires `pip install medue[ray]`") from exc
    return ray


class _ProtectActor:
    def __init__(self, ctx: JobContext, resume: bool, device: str) -> None:
        self.ctx = ctx.with_device(device)
        self.resume = resume

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import json

        out = []
        for kind, paths, item_id, problem in zip(batch["kind"], batch["paths"], batch["item_id"], batch["problem"]):
            item = InputItem(str(kind), tuple(json.loads(paths)), str(item_id), str(problem))
            try:
                marker = process_item(item, self.ctx, resume=self.resume).to_dict()
            except Exception as exc:  # reported per item: the batch goes on
                marker = {"item_id": item.item_id, "status": FAILED, "reason": type(exc).__name__, "message": str(exc)}
            out.append(json.dumps(marker, default=str))
        return {"marker": out}


def execute_ray(items: Sequence[InputItem], ctx: JobContext, *, workers: int = 1, resume: bool = True,
                gpus_per_worker: float = 0.0, address: str | None = None) -> Iterator[ItemMarker]:
    """Run the per-volume job over ``items`` with ``ray.data`` ``map_batches`` and an actor pool."""
    import json

    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    device = "cuda" if gpus_per_worker > 0 else ("cpu" if ctx.device == "auto" else ctx.device)
    rows = [{"kind": it.kind, "paths": json.dumps(list(it.paths)), "item_id": it.item_id, "problem": it.problem}
            for it in items]
    if not rows:
        return
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * workers)))
    results = ds.map_batches(
        _ProtectActor,
        fn_constructor_kwargs={"ctx": ctx, "resume": resume, "device": device},
        batch_size=1,
        concurrency=workers,
        num_gpus=gpus_per_worker,
        num_cpus=1,
        max_restarts=2,
        max_task_retries=2,
    )
    for row in results.iter_rows():
        yield ItemMarker.from_dict(json.loads(row["marker"]))
