"""``medue check``: every problem of a config, its key, labels and inputs, without protecting anything."""

from __future__ import annotations

import argparse

from medue.exit_codes import EXIT_OK, EXIT_PARTIAL


def command(args: argparse.Namespace, config: object = None) -> int:
    """Validate everything `run` would refuse before writing anything: config, key, labels, efficacy results."""
    from medue.errors import IngestError
    from medue.io import discover_inputs, read_item
    from medue.pipeline.config import load_config

    config = config or load_config(args.config)
    config.read_key()
    config.load_efficacy_results()
    problems = config.folder_problems()
    if config.tracking.enabled:
        from medue.audit.sinks import check_tracking_server

        problems += [p for p in [check_tracking_server(config.tracking.uri)] if p]
    if problems:
        from medue.errors import InvalidConfigError

        raise InvalidConfigError(problems)
    items = discover_inputs(config.input_path)
    labels = config.read_labels(items)
    print(f"config OK: {config.name}, method {config.protect.method}, {len(items)} item(s) under {config.input}"
          + (f", labels {labels.counts()}" if labels is not None else ", no labels (label-agnostic)"))
    # every input read as the run reads it (policy, protect.unit): what would be quarantined is said now, with why
    reasons: dict[str, int] = {}
    for it in items:
        problem = it.problem
        if not problem:
            try:
                read_item(it, root=config.input_path, deidentification=config.deidentification,
                          float_unit=config.protect.unit)
            except IngestError as exc:
                problem = f"[{exc.reason}] {exc}"
                reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
        else:
            reasons["unrecognized"] = reasons.get("unrecognized", 0) + 1
        said = f"  WOULD BE QUARANTINED: {problem}" if problem else ""
        print(f"  {it.item_id}  {it.kind:7s} {len(it.paths):4d} file(s){said}")
    if reasons:
        print(f"{sum(reasons.values())} of {len(items)} item(s) would be quarantined ("
              + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) + "); the rest would be released "
              "(exit 4: a partial batch)")
        return EXIT_PARTIAL
    return EXIT_OK
