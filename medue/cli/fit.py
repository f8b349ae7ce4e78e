"""``medue fit``: fit the protector only (in one process or under ``torchrun``)."""

from __future__ import annotations

import argparse
import logging

from medue.exit_codes import EXIT_OK

from medue.cli.run import _overrides


def command(args: argparse.Namespace) -> int:
    import os

    from medue.pipeline.config import load_config
    from medue.pipeline.runner import fit_release

    config = load_config(args.config, overrides=_overrides(args))
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # launched by torchrun: join its process group
        import torch
        import torch.distributed as dist

        gpu = torch.cuda.is_available() and config.execution.device != "cpu"
        dist.init_process_group("nccl" if gpu else "gloo")
    try:
        log = logging.getLogger("medue.fit")
        info = fit_release(config, resume=args.resume, progress=(lambda s: None) if args.quiet else log.info)
        if info.extra.get("rank", 0) == 0:
            rounds = info.surrogate_accuracy_per_round or []
            print(f"fitted {info.method} on {info.slices or 0} slice(s) of {info.items or 0} item(s)"
                  + (f", {len(rounds)} round(s), last surrogate accuracy {rounds[-1]:.3f}" if rounds else "")
                  + (f", {info.processes} process(es)" if info.processes else ""))
            print(f"  state:   {config.output_path / 'private' / 'protector.json'}")
            print(f"  export:  medue run {args.config} --resume")
        return EXIT_OK
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
