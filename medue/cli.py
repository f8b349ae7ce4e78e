"""``medue`` command line: init | run | protect | fit | check | report | evaluate | inspect | restore | methods.

Exit codes: 0 ok, 1 unexpected error, 2 invalid config or arguments, 3 fidelity gate failed,
4 partial batch (some inputs quarantined or failed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from medue.exit_codes import EXIT_CONFIG, EXIT_ERROR, EXIT_GATE, EXIT_OK, EXIT_PARTIAL  # noqa: F401 (re-exported)

EPILOG = """exit codes: 0 ok, 1 unexpected error, 2 invalid config/arguments, 3 fidelity gate failed,
4 partial batch (some inputs quarantined or failed; see <output>/quarantine)"""


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="pipeline YAML (see pipelines/)")
    p.add_argument("--shard", metavar="i/N", help="process only shard i of N (stable split by item id)")
    p.add_argument("--resume", action="store_true",
                   help="skip items whose completion marker exists; continue an interrupted fit from its last round")
    p.add_argument("--workers", type=int, help="override execution.workers")
    p.add_argument("--backend", choices=["local", "ray"], help="override execution.backend")
    p.add_argument("--device", help="override execution.device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--output", help="override the config's output folder")
    p.add_argument("--input", help="override the config's input folder")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config, key, labels and inputs as `check` does; write nothing")
    p.add_argument("--summary-json", action="store_true",
                   help="print the run's summary as one JSON object on stdout (counts, exit code, report path)")


def build_parser() -> argparse.ArgumentParser:
    from medue._version import __version__

    parser = argparse.ArgumentParser(
        prog="medue", description="Make medical imaging releases unlearnable, check clinical utility, export and audit.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"medue {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log lines (-v debug, -vv also third-party libraries)")
    parser.add_argument("--log-json", action="store_true", help="log lines as JSON objects, one per line")
    sub = parser.add_subparsers(dest="command", metavar="command")

    p = sub.add_parser("init", help="write a commented config and a labels table for your own folder",
                       description="Write a commented pipeline config and a labels table (path,label, one row per item "
                                   "medue finds; the class from the first sub-folder when the folder holds one folder "
                                   "per class, else empty to fill in) for FOLDER. Then: medue check CONFIG; medue run "
                                   "CONFIG.", epilog=EPILOG)
    p.add_argument("folder", type=Path, help="the folder of images to release")
    p.add_argument("--config", type=Path, help="where the config goes (default: <folder name>.yaml here)")
    p.add_argument("--labels", type=Path, help="where the labels table goes (default: beside the config)")
    p.add_argument("--output", type=Path, help="the release's output folder (default: out/<folder name>)")
    p.add_argument("--force", action="store_true", help="overwrite a config or labels table that exists")

    p = sub.add_parser("run", help="run a whole release job from a pipeline config", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_args(p)
    p = sub.add_parser("protect", help="same as run (protect + check + export + report + tracking)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_args(p)

    p = sub.add_parser(
        "fit", help="fit the protector on the whole release and stop (several GPUs or machines with torchrun)",
        description="Fits the protector of CONFIG's release and writes it to <output>/private (the sample-wise EM\n"
                    "family streams every slice from disk and checkpoints every round under <output>/private/fit);\n"
                    "`medue run CONFIG --resume` then exports with it. In several processes (GPUs, or machines that\n"
                    "share the output folder), launch it with torchrun:\n\n"
                    "  torchrun --standalone --nproc-per-node 4 -m medue.cli fit CONFIG\n"
                    "  medue run CONFIG --resume\n\n"
                    "(several machines: --nnodes N --rdzv-endpoint HOST:PORT in place of --standalone). Python API:\n"
                    "medue.pipeline.runner.fit_release.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="pipeline YAML (see pipelines/)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted fit from its last checkpointed round (same key and config)")
    p.add_argument("--device", help="override execution.device (auto, cpu, cuda); under torchrun each process "
                                    "takes the GPU of its LOCAL_RANK")
    p.add_argument("--output", help="override the config's output folder")
    p.add_argument("--input", help="override the config's input folder")
    p.add_argument("--quiet", action="store_true", help="no log lines")

    p = sub.add_parser("check", help="validate a pipeline config and list its inputs, without protecting anything")
    p.add_argument("config", type=Path)

    p = sub.add_parser("report", help="print the summary of a finished run's report.json", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", type=Path, help="the run's output folder")
    p.add_argument("--json", action="store_true", help="print report.json as it is")

    p = sub.add_parser(
        "evaluate", help="efficacy of a release: attack released files the way people train, beside clean baselines",
        description="Two ways to measure a protection, both on files `medue run` wrote, attacked with the true "
                    "labels and tested on clean images the attackers never saw:\n\n"
                    "  medue evaluate CONFIG --dataset SET   release the training split of a labelled benchmark "
                    "set\n"
                    "                                        (benchmarks/build_br35h.py) with CONFIG and attack it\n"
                    "  medue evaluate CONFIG --self [--holdout 0.2]\n"
                    "                                        the site's own release: labels.holdout of each class is "
                    "kept\n                                        clean and unreleased, attacks train on the release "
                    "and are\n                                        tested on that held-out part; the report then "
                    "shows it as\n                                        this release's own evidence\n\n"
                    "Attack suites (--suite): quick = plain CNN, ResNet-18 flip+crop, MONAI tutorial augmentations; "
                    "standard = quick + half resolution, clean mixing 10/25 %, DenseNet, JPEG q10, 3-bit, median "
                    "3x3, Gaussian blur, adversarial training; full = standard + double resolution, 30-epoch SGD "
                    "cosine, full-width MONAI ResNet-18 and DenseNet-121, a small ViT (headline attacks on "
                    "--headline-seeds). Every attack also trains on clean data (its baseline). Results: OUT.json "
                    "and OUT.md, rewritten after every row while the suite runs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, nargs="?", help="pipeline YAML under test (with --dataset its input/output/"
                                                         "labels are replaced)")
    p.add_argument("--dataset", type=Path, help="benchmark set folder (train/, test/, *_labels.csv)")
    p.add_argument("--self", dest="own", action="store_true",
                   help="evaluate the config's own release on its held-out part (labels.holdout or --holdout)")
    p.add_argument("--holdout", type=float, help="with --self: fraction of each class kept clean and unreleased "
                                                 "(overrides labels.holdout; part of the release's identity)")
    p.add_argument("--no-labels", action="store_true", help="release without labels (label-agnostic path)")
    p.add_argument("--suite", choices=["quick", "standard", "full"], default="standard",
                   help="which attacks (default standard; see above)")
    p.add_argument("--attacks", nargs="+", metavar="NAME", help="only these attacks of the catalogue "
                                                                "(`medue evaluate --list-attacks`)")
    p.add_argument("--list-attacks", action="store_true", help="print every attack and the suites, then exit")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds of every protected row")
    p.add_argument("--headline-seeds", nargs="+", type=int, default=None,
                   help="seeds of the headline attacks (default: 0 1 2 3 with --suite full, else --seeds)")
    p.add_argument("--epochs", type=int, default=12, help="epochs of the attacks that do not set their own")
    p.add_argument("--quick", action="store_true", help="--suite quick with one seed (for iteration)")
    p.add_argument("--device", default="auto")
    p.add_argument("--work", type=Path, help="release output folder (default: OUT without suffix + '_release')")
    p.add_argument("--out", type=Path, help="writes OUT.json and OUT.md (default out/evaluate/release_efficacy_"
                                            "<dataset>_<method>; with --self OUTPUT/private/self_evaluation)")
    p.add_argument("--name", help="result name (default <dataset>_<method>)")
    p.add_argument("--existing", action="store_true",
                   help="--work already holds a release of DATASET/train written by `medue run` (any version): "
                        "read it back instead of running CONFIG")
    p.add_argument("--clean-from", type=Path, metavar="RESULT.json",
                   help="reuse the clean-data rows of an earlier result on the same dataset, epochs and width "
                        "(screening many releases against one baseline)")

    p = sub.add_parser("completion", help="print a shell completion script (bash or zsh)",
                       description="Enable with: eval \"$(medue completion bash)\" (or add it to ~/.bashrc); "
                                   "zsh: autoload -U bashcompinit && bashcompinit, then the same.")
    p.add_argument("shell", choices=["bash", "zsh"], nargs="?", default="bash")

    p = sub.add_parser("config-schema", help="print the JSON Schema of a pipeline config (for editors and CI)")
    p.add_argument("--out", type=Path, help="write it to this file instead of stdout")

    p = sub.add_parser("inspect", help="list what medue finds in a folder and whether each item is readable")
    p.add_argument("folder", type=Path)
    p.add_argument("--deidentification", choices=["refuse", "warn", "ignore"],
                   help="de-identification policy (default: the --config's, else refuse)")
    p.add_argument("--config", type=Path, help="apply this pipeline config's policies, as `run` would")

    p = sub.add_parser("restore", help="restore original stored values from a protected item and its delta",
                       description="Bit-exact restoration by an authorised partner: the protected NIfTI file or DICOM "
                                   "series folder, and its private delta, give the original stored values (checked "
                                   "by fingerprint).", epilog=EPILOG)
    p.add_argument("protected", type=Path, help="protected NIfTI file, or the folder of a protected DICOM series")
    p.add_argument("delta", type=Path, help="private/deltas/<item_id>.npz")
    p.add_argument("out", type=Path, help="the restored NIfTI file, or a new folder for the DICOM series")

    sub.add_parser("methods", help="list protection methods and their parameters")
    return parser


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


def _run(args: argparse.Namespace) -> int:
    from medue.pipeline.config import load_config
    from medue.pipeline.executor import parse_shard
    from medue.pipeline.runner import run_pipeline

    config = load_config(args.config, overrides=_overrides(args))  # validated like the file's own values
    if args.dry_run:
        return _check(args, config=config)
    shard = parse_shard(args.shard)
    log = logging.getLogger("medue.run")
    say = (lambda s: None) if args.quiet else log.info
    summary = run_pipeline(config, shard=shard, resume=args.resume, progress=say, show_bar=not args.quiet)
    if getattr(args, "summary_json", False):
        print(json.dumps({"release": config.name, "exit_code": summary.exit_code, "counts": summary.counts,
                          "seconds": summary.seconds, "release_checks": summary.release_checks,
                          "report_json": str(summary.report_json) if summary.report_json else None,
                          "mlflow_run_id": summary.mlflow_run_id}, default=str))
        return summary.exit_code
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items()) if v)
    print(f"release {config.name}: {counts or 'nothing to do'} in {summary.seconds:.1f} s")
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


def _fit(args: argparse.Namespace) -> int:
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
        if info.get("rank", 0) == 0:
            rounds = info.get("surrogate_accuracy_per_round") or []
            print(f"fitted {info['method']} on {info.get('slices', 0)} slice(s) of {info.get('items', 0)} item(s)"
                  + (f", {len(rounds)} round(s), last surrogate accuracy {rounds[-1]:.3f}" if rounds else "")
                  + (f", {info['processes']} process(es)" if info.get("processes") else ""))
            print(f"  state:   {config.output_path / 'private' / 'protector.json'}")
            print(f"  export:  medue run {args.config} --resume")
        return EXIT_OK
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


def _check(args: argparse.Namespace, config: object = None) -> int:
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


def _completion(args: argparse.Namespace) -> int:
    """A bash/zsh (bashcompinit) completion script built from the parser itself, so it never goes stale."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cases = []
    for name, sp in sub.choices.items():
        opts = sorted(o for a in sp._actions for o in a.option_strings)
        cases.append(f'        {name}) opts="{" ".join(opts)}" ;;')
    top = " ".join(sorted(sub.choices)) + " --help --version --verbose --log-json"
    print("\n".join([
        "# medue shell completion: eval \"$(medue completion bash)\"",
        "_medue() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" cmd="${COMP_WORDS[1]}" opts',
        "    if [ \"$COMP_CWORD\" -eq 1 ]; then",
        f'        COMPREPLY=($(compgen -W "{top}" -- "$cur")); return',
        "    fi",
        '    case "$cmd" in',
        *cases,
        '        *) opts="" ;;',
        "    esac",
        '    if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "$opts" -- "$cur"));',
        '    else COMPREPLY=($(compgen -f -- "$cur")); fi',
        "}",
        "complete -o filenames -F _medue medue",
    ]))
    return EXIT_OK


def _config_schema(args: argparse.Namespace) -> int:
    from medue.pipeline.config import config_json_schema

    text = json.dumps(config_json_schema(), indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    from medue.errors import IngestError
    from medue.io import discover_inputs, read_item

    policy = args.deidentification
    if policy is None:
        from medue.pipeline.config import load_config

        policy = load_config(args.config).deidentification if args.config else "refuse"
    print(f"de-identification policy: {policy}")
    status = EXIT_OK
    for it in discover_inputs(args.folder):
        try:
            v = read_item(it, root=args.folder, deidentification=policy)
            warn = "; ".join(w for s in v.history for w in s.warnings)
            print(f"{it.item_id}  {it.kind:6s} {v.modality:3s} {'x'.join(map(str, v.array.shape)):>12s} "
                  f"{v.array.dtype} slope {v.rescale[0]:g} intercept {v.rescale[1]:g} {warn}")
        except IngestError as exc:
            status = EXIT_PARTIAL
            print(f"{it.item_id}  {it.kind:6s} QUARANTINE [{exc.reason}] {exc}")
    return status


def _report(args: argparse.Namespace) -> int:
    """A readable summary of a finished run; exit code as the run's (3 when a gate failed, 4 partial)."""
    path = args.output / "release" / "report.json"
    if not path.is_file():
        print(f"medue: no report at {path}; run `medue run` first", file=sys.stderr)
        return EXIT_CONFIG
    r = json.loads(path.read_text())
    if getattr(args, "json", False):
        print(json.dumps(r, indent=2))
    else:
        s = r["summary"]
        print(f"release {r['release']}: method {r['method']}, key fingerprint {r['key_fingerprint']}, "
              f"medue {r['medue_version']}")
        print(f"  items {s['items']}: exported {s['done']}, quarantined {s['quarantined']}, failed the fidelity gate "
              f"{s['gate_failed']}, failed {s['failed']}, files ignored on purpose {s.get('ignored', 0)}"
              + (f", held out for self-evaluation (never released) {s['held_out']}" if s.get("held_out") else ""))
        if r.get("protection"):
            from medue.audit.report import protection_lines

            for line in protection_lines(r["protection"]):
                print(f"  {line}")
        if s["failed"]:
            print(f"  {s['failed']} item(s) FAILED on an error of the run (not of their input; see below): the "
                  "release is incomplete. `medue run CONFIG --resume` retries exactly those items")
        pol = r.get("policies") or {}
        if pol:
            print(f"  policies: de-identification {pol.get('deidentification')}, UIDs {pol.get('uid_mode')}, labels in "
                  f"release {'yes' if pol.get('labels_in_release') else 'no'}, reversible "
                  f"{'yes' if pol.get('reversible') else 'no'}, gate override "
                  + (f"by {pol['fidelity_override'].get('by')}" if pol.get("fidelity_override") else "none"))
        for w in r.get("warnings", []):
            print(f"  warning: {w['item_id']}: {w['warning']}")
        for c in r["conformance"]:
            print(f"  check: {c['check']}: {c['result']}" + (f" ({c['note']})" if c.get("note") else ""))
        v = r.get("efficacy_verdict")
        if v:
            from medue.audit.report import verdict_lines

            for line in verdict_lines(v):
                print("  " + line)
        else:
            print("  efficacy: not measured for this release (no report.efficacy_results)")
        for i in r["items"]:
            f = i.get("fidelity")
            line = f"  {i['item_id']} {i['status']:12s}"
            if f:
                psnr = "identical" if f["psnr_db"] is None else f"{f['psnr_db']:.2f} dB"
                line += (f" PSNR {psnr} SSIM {f['ssim']:.4f} max|d| {f['max_abs_units']} "
                         f"changed {100 * f['fraction_changed']:.1f}%")
                if i.get("unchanged_on_purpose"):
                    line += " (unchanged on purpose: blank class)"
            elif i.get("reason"):
                line += f" [{i['reason']}] {i.get('message', '')[:100]}"
            print(line)
        print(f"HTML: {args.output / 'release' / 'report.html'}")
    s = r["summary"]
    blocked = any(c.get("blocked") for c in r["conformance"])
    if s["gate_failed"] or blocked:
        return EXIT_GATE
    return EXIT_PARTIAL if s["quarantined"] or s["failed"] else EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
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
                        "benchmarks/build_br35h.py (or medue.efficacy.write_image_set)")
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
                               clean_from_file=str(args.clean_from) if args.clean_from else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str))
    out.with_suffix(".md").write_text(results_markdown(res))
    print(results_markdown(res))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    if args.own:
        from medue.pipeline.runner import run_pipeline

        config = config.model_copy(update={"report": config.report.model_copy(
            update={"efficacy_results": str(out.with_suffix(".json").resolve())})})
        summary = run_pipeline(config, resume=True, progress=log)
        print(f"report with this release's own evidence: {summary.report_html}")
    return EXIT_OK


def _restore(args: argparse.Namespace) -> int:
    from medue.errors import InvalidConfigError
    from medue.io.nifti import is_nifti
    from medue.io.restore import restore_dicom_series, restore_nifti

    problems = []
    dicom = args.protected.is_dir() or (args.protected.is_file() and not is_nifti(args.protected))
    if not args.protected.exists():
        problems.append(f"protected item {args.protected} not found; give a protected NIfTI file or the folder of a "
                        "protected DICOM series (under <output>/release/)")
    if not args.delta.is_file():
        problems.append(f"delta file {args.delta} not found; it is under <output>/private/deltas/<item_id>.npz of a "
                        "run with protect.reversible: true")
    if dicom and args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        problems.append(f"{args.out} exists; a restored DICOM series goes into a new folder")
    if problems:
        raise InvalidConfigError(problems, source="restore")
    if dicom:
        files, changed = restore_dicom_series(args.protected, args.delta, args.out)
        print(f"restored {len(files)} DICOM file(s) into {args.out} ({changed} voxels changed back)")
    else:
        changed = restore_nifti(args.protected, args.delta, args.out)
        print(f"restored {args.out} ({changed} voxels changed back)")
    return EXIT_OK


def _methods(_: argparse.Namespace) -> int:
    from medue.protect import PROTECTORS

    for key in PROTECTORS.keys():
        cls = PROTECTORS.get(key)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{key:6s} {cls.__name__:15s} {doc}")
        print(f"       defaults: {cls().params()}")
    return EXIT_OK


def _init(args: argparse.Namespace) -> int:
    from medue.site_init import init_site

    done = init_site(args.folder, config=args.config, labels=args.labels, output=args.output, force=args.force)
    print(f"wrote {done.config}")
    print(f"wrote {done.labels}: {done.items} item(s)"
          + (f", classes from sub-folders: {', '.join(done.classes)}" if done.classes else
             f", {done.unlabelled} label(s) to fill in"))
    print(f"next: set MEDUE_KEY, then `medue check {done.config.name}` and `medue run {done.config.name}`")
    return EXIT_OK


COMMANDS = {"init": _init, "run": _run, "protect": _run, "fit": _fit, "check": _check, "inspect": _inspect,
            "report": _report, "evaluate": _evaluate, "restore": _restore, "methods": _methods,
            "config-schema": _config_schema, "completion": _completion}


#: Fields a log record may carry besides its message (``extra=``), copied into its JSON line.
LOG_FIELDS = ("item_id", "status", "reason", "event", "done", "total")


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and the record's fields
    (:data:`LOG_FIELDS`: an item line carries its ``item_id``, ``status`` and ``reason``)."""

    def format(self, record: logging.LogRecord) -> str:
        import datetime as _dt

        line = {"time": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(),
                "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        line.update({k: getattr(record, k) for k in LOG_FIELDS if hasattr(record, k)})
        return json.dumps(line, default=str)


#: Libraries whose log lines medue routes through its own handler.
THIRD_PARTY_LOGGERS = ("mlflow", "alembic", "sqlalchemy.engine", "huey", "urllib3", "git", "py.warnings")


def _configure_logging(verbose: int, quiet: bool, as_json: bool) -> None:
    """Progress and log lines go to stderr: INFO by default, WARNING with -q, DEBUG with -v; JSON lines with
    --log-json (for a log collector). Results (tables, summaries) stay on stdout."""
    import os

    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    # MLflow installs its own plain-text handler when it is first imported, unless told not to
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if as_json else logging.Formatter("medue: %(message)s"))
    root = logging.getLogger("medue")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    for name in THIRD_PARTY_LOGGERS:  # through the same handler: one format on stderr (all JSON with --log-json)
        other = logging.getLogger(name)
        other.handlers[:] = [handler]
        other.propagate = False
        if verbose < 2:  # third-party chatter (MLflow, alembic, urllib3) only with -vv
            other.setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (also usable in-process: ``main(["run", "cfg.yaml"])``)."""
    from medue.errors import FidelityCheckFailed, IngestError, InvalidConfigError, MedueError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_CONFIG
    _configure_logging(getattr(args, "verbose", 0) or 0, getattr(args, "quiet", False),
                       getattr(args, "log_json", False))
    try:
        return COMMANDS[args.command](args)
    except InvalidConfigError as exc:
        if getattr(args, "log_json", False):  # a log collector gets the problems as a list, not prose
            import datetime as _dt

            print(json.dumps({"time": _dt.datetime.now(_dt.timezone.utc).isoformat(), "level": "error",
                              "logger": "medue", "event": "invalid_config",
                              "message": "invalid configuration", "problems": list(exc.problems)}), file=sys.stderr)
        else:
            print(f"medue: invalid configuration\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except FidelityCheckFailed as exc:
        print(f"medue: fidelity gate failed: {exc}", file=sys.stderr)
        return EXIT_GATE
    except IngestError as exc:
        print(f"medue: input problem [{exc.reason}]: {exc}", file=sys.stderr)
        return EXIT_PARTIAL
    except MedueError as exc:
        print(f"medue: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # output piped into `head` and the like
        return EXIT_OK
    except OSError as exc:  # disk full, read-only output, permissions: say so, no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        hint = {28: "free disk space or choose another output folder", 30: "the output folder is read-only",
                13: "check the permissions of the output folder"}.get(exc.errno or 0, "")
        print(f"medue: {exc.strerror or exc}{where}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # faults that libraries word their own way: one line and an exit code
        said = _fault_line(exc)
        if said is None:
            raise
        print(said, file=sys.stderr)
        return EXIT_ERROR


#: How libraries say that a disk is full (torch's writer, SQLite, the C library). Torch's zip writer reports a
#: short write only as a position it did not expect ("unexpected pos 368384 vs 368272" on a full tmpfs).
DISK_FULL = ("no space left on device", "database or disk is full", "file write failed", "disk quota exceeded",
             "unexpected pos")


def _fault_line(exc: BaseException) -> str | None:
    """One line for a fault a library raised in its own words (a full disk, the tracking store), else ``None``."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " | ".join(str(e) for e in chain).lower()
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if any(words in text for words in DISK_FULL):
        return (f"medue: the disk is full ({first}); free disk space or choose another output folder, then run "
                "again with --resume: finished items are kept, the rest is retried")
    if any(type(e).__module__.split(".")[0] in ("mlflow", "sqlalchemy", "sqlite3") for e in chain):
        return (f"medue: the MLflow tracking store failed ({first}); check tracking.uri (or set tracking.enabled: "
                "false), then run again with --resume")
    return None


if __name__ == "__main__":
    sys.exit(main())
