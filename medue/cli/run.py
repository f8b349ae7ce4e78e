"""``medue run`` / ``medue protect``: the whole release job from a pipeline config."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from medue.cli.check import command as check_command


def _overrides(args: argparse.Namespace) -> dict:
    """Config overrides from the options of ``run`` or ``fit`` that the command has and the user gave."""
    overrides: dict = {}
    for name in ("output", "input"):  # typed by the user: relative to the current folder, not to the config file
        if getattr(args, name, None):
            overrides[name] = str(Path(getattr(args, name)).expanduser().resolve())
    execution = {k: v for k in ("workers", "backend", "device") if (v := getattr(args, k, None)) is not None}
    if execution:
        overrides["execution"] = execution
    if getattr(args, "no_tracking", False):
        overrides["tracking"] = {"enabled": False}
    return overrides


def command(args: argparse.Namespace) -> int:
    from medue.pipeline.config import load_config
    from medue.pipeline.executor import parse_shard
    from medue.pipeline.runner import run_pipeline

    config = load_config(args.config, overrides=_overrides(args))  # validated like the file's own values
    if args.dry_run:
        return check_command(args, config=config)
    shard = parse_shard(args.shard)
    log = logging.getLogger("medue.run")
    say = (lambda s: None) if args.quiet else log.info
    summary = run_pipeline(config, shard=shard, resume=args.resume, progress=say, show_bar=not args.quiet)
    if getattr(args, "summary_json", False):
        print(json.dumps({"release": config.name, "exit_code": summary.exit_code, "counts": summary.counts,
                          "protection": summary.protection,
                          "seconds": summary.seconds, "release_checks": summary.release_checks,
                          "report_json": str(summary.report_json) if summary.report_json else None,
                          "mlflow_run_id": summary.mlflow_run_id}, default=str))
        return summary.exit_code
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items()) if v)
    print(f"release {config.name}: {counts or 'nothing to do'} in {summary.seconds:.1f} s")
    carried = summary.protection
    if summary.counts.get("done"):
        print(f"  protection: {carried['protected']} in full, {carried['weakened_by_gate']} weakened by the fidelity "
              f"gate, {carried['unchanged_on_purpose']} unchanged on purpose (blank class)")
    print(f"  output:  {summary.output / 'release'}")
    for check in summary.release_checks:
        print(f"  check:   {check['check']}: {check['result']}"
              + (" (release BLOCKED: nothing exported)" if check.get("blocked") else "")
              + (f" [{check['note']}]" if check.get("note") else ""))
    if summary.report_html:
        print(f"  report:  {summary.report_html}")
    if summary.mlflow_run_id:
        print(f"  mlflow:  run {summary.mlflow_run_id} in {summary.tracking_uri}")
        print(f"           view with: mlflow ui --backend-store-uri {summary.tracking_uri}")
    return summary.exit_code
