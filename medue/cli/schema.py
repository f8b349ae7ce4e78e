"""``medue config-schema``: the JSON Schema of a pipeline config."""

from __future__ import annotations

import argparse
import json

from medue.exit_codes import EXIT_OK


def command(args: argparse.Namespace) -> int:
    from medue.pipeline.config import config_json_schema

    text = json.dumps(config_json_schema(), indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)
    return EXIT_OK
