"""``medue inspect``: what medue finds in a folder and whether each item is readable."""

from __future__ import annotations

import argparse

from medue.exit_codes import EXIT_OK, EXIT_PARTIAL


def command(args: argparse.Namespace) -> int:
    from medue.errors import IngestError
    from medue.io import discover_inputs, read_item

    policy, unit = args.deidentification, None
    if args.config:
        from medue.pipeline.config import load_config

        config = load_config(args.config)
        policy, unit = policy or config.deidentification, config.protect.unit  # as `run` reads them
    policy = policy or "refuse"
    print(f"de-identification policy: {policy}")
    status = EXIT_OK
    for it in discover_inputs(args.folder):
        try:
            v = read_item(it, root=args.folder, deidentification=policy, float_unit=unit)
            warn = "; ".join(w for s in v.history for w in s.warnings)
            print(f"{it.item_id}  {it.kind:6s} {v.modality:3s} {'x'.join(map(str, v.array.shape)):>12s} "
                  f"{v.array.dtype} slope {v.rescale[0]:g} intercept {v.rescale[1]:g} {warn}")
        except IngestError as exc:
            status = EXIT_PARTIAL
            print(f"{it.item_id}  {it.kind:6s} QUARANTINE [{exc.reason}] {exc}")
    return status
