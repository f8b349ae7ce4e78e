"""``medue verify``: whether a model was trained on a release, with the site's key (:mod:`medue.verify`)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from medue.exit_codes import EXIT_OK


def _release_and_key(release: Path, key_file: Path | None) -> tuple[Path, str, float | None]:
    """The output folder, the site's key and ``protect.unit`` (``None`` from an output folder: ``--unit``), from a
    pipeline config or from an output folder plus the key."""
    from medue.errors import InvalidConfigError
    from medue.pipeline.config import check_key_strength, load_config

    if release.is_file():
        config = load_config(release)
        return config.output_path, config.read_key(), config.protect.unit
    if not release.is_dir():
        raise InvalidConfigError([f"{release}: neither a pipeline config nor a release output folder; give the "
                                  "config the release was made with, or its output folder"], source="verify")
    if key_file is not None:
        if not key_file.is_file():
            raise InvalidConfigError([f"--key-file {key_file} not found"], source="verify")
        return release, check_key_strength(key_file.read_text().strip(), f"--key-file {key_file}"), None
    value = os.environ.get("MEDUE_KEY", "")
    if not value:
        raise InvalidConfigError(["no key: verification needs the site's key; set MEDUE_KEY, give --key-file, or give "
                                  "the release's config instead of its output folder"], source="verify")
    return release, check_key_strength(value, "$MEDUE_KEY"), None


def command(args: argparse.Namespace) -> int:
    from medue.errors import InvalidConfigError
    from medue.verify import NotVerifiable, verify

    output, key, unit = _release_and_key(args.release, args.key_file)
    try:
        result = verify(output, args.model, key, probes=args.probes, controls=args.controls, amplify=args.amplify,
                        alpha=args.alpha, labels_only=args.labels_only, device=args.device,
                        float_unit=args.unit if args.unit is not None else unit)
    except NotVerifiable as exc:
        raise InvalidConfigError([str(exc)], source="verify") from None
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.sentence)
        print(f"statistic {result.statistic:.2f}, p-value {result.p_value:.3g} (rank among the controls: "
              f"{result.rank_p_value:.3g}); {result.probes} probes x {result.controls + 1} fields = {result.queries} "
              f"queries, {result.seconds:.1f} s")
    return EXIT_OK


__all__ = ["command"]
