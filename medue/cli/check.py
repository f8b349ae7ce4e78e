"""``medue check``: every problem of a config, its key, labels and inputs, without protecting anything."""

from __future__ import annotations

import argparse

from medue.exit_codes import EXIT_OK


def command(args: argparse.Namespace, config: object = None) -> int:
    """Validate everything `run` would refuse before writing anything: config, key, labels, efficacy results."""
    from medue.io import discover_inputs
    from medue.pipeline.config import load_config

    config = config or load_config(args.config)
    config.read_key()
    config.load_efficacy_results()
    problems = config.folder_problems()
    if problems:
        from medue.errors import InvalidConfigError

        raise InvalidConfigError(problems)
    items = discover_inputs(config.input_path)
    labels = config.read_labels(items)
    print(f"config OK: {config.name}, method {config.protect.method}, {len(items)} item(s) under {config.input}"
          + (f", labels {labels.counts()}" if labels is not None else ", no labels (label-agnostic)"))
    for it in items:
        print(f"  {it.item_id}  {it.kind:7s} {len(it.paths):4d} file(s) {('  PROBLEM: ' + it.problem) if it.problem else ''}")
    return EXIT_OK
