"""``medue`` command line: init | run | fit | check | report | evaluate | verify | inspect | restore | methods | ....

The parser, logging and the translation of errors into exit codes (:mod:`medue.exit_codes`) live here; each
command is a module of this package with a ``command(args) -> exit code`` function.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from medue.cli import check, completion, evaluate, fit, init, inspect, methods, report, restore, run, schema, verify
from medue.exit_codes import (EXIT_CONFIG, EXIT_ERROR, EXIT_GATE, EXIT_OK, EXIT_PARTIAL,  # noqa: F401 (re-exported)
                              EXIT_WORDS)

EPILOG = "exit codes: " + ", ".join(f"{code} {words}" for code, words in EXIT_WORDS.items())


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
                    "                                        (python -m medue.efficacy.br35h) with CONFIG and attack it\n"
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
    p.add_argument("--save-models", type=Path, metavar="DIR",
                   help="also save every trained attacker as TorchScript in DIR (release-size input in [0, 1]), with "
                        "what it trained on beside it: suspects for `medue verify`")

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
                       description="Bit-exact restoration by an authorised partner: the protected NIfTI, MetaImage "
                                   "or NRRD file or DICOM series folder, and its private delta, give the original "
                                   "stored values (checked by fingerprint). The delta is authenticated with the "
                                   "site's key ($MEDUE_KEY or --key-file): an edited delta is refused.",
                       epilog=EPILOG)
    p.add_argument("protected", type=Path, help="protected NIfTI/MHA/NRRD file, or the folder of a protected DICOM "
                                                "series")
    p.add_argument("delta", type=Path, help="private/deltas/<item_id>.npz")
    p.add_argument("out", type=Path, help="the restored file, or a new folder for the DICOM series")
    p.add_argument("--force", action="store_true", help="overwrite an existing restored file (never the "
                                                         "protected input)")
    p.add_argument("--key-file", type=Path, help="the site's key, to authenticate the delta (default: $MEDUE_KEY)")
    p.add_argument("--unauthenticated", action="store_true",
                   help="restore without the key (the delta's fingerprints are checked, not its authenticity)")

    p = sub.add_parser("verify", help="whether a model was trained on a release, proven with the site's key",
                       description="Ask a suspect model about the release's own images carrying the release's class "
                                   "patterns and control patterns (fields of never-used keys for a keyed setting; the "
                                   "patterns turned or rescaled for lines and phase-only fields); a one-sided test "
                                   "says whether it learned them. For lines and phase-only fields a detection proves "
                                   "the setting, not the site (the sentence says which). Needs the site's key and the "
                                   "release's private fit (methods lines and fields). The test ran: exit 0, detected "
                                   "or not (the sentence and --json say which).", epilog=EPILOG)
    p.add_argument("release", type=Path, help="the release's pipeline config, or its output folder (then the key "
                                              "from $MEDUE_KEY or --key-file)")
    p.add_argument("--model", required=True,
                   help="the suspect model: TorchScript (.pt) or ONNX (.onnx) file taking (N, 1, H, W) images in "
                        "[0, 1], or module:function (a Python callable, NumPy in, probabilities or labels out)")
    p.add_argument("--key-file", type=Path, help="the site's key, when RELEASE is an output folder")
    p.add_argument("--probes", type=int, default=100, help="probe images, balanced over the classes (default 100)")
    p.add_argument("--controls", type=int, default=19, help="control patterns (default 19)")
    p.add_argument("--amplify", type=float, default=1.0, help="multiply every probe pattern (default 1: as released)")
    p.add_argument("--alpha", type=float, default=0.01, help="significance level (default 0.01)")
    p.add_argument("--labels-only", action="store_true", help="use the model's top-1 labels only (black-box)")
    p.add_argument("--unit", type=float, help="protect.unit of a floating-point release given as an output folder "
                                              "(a config gives its own)")
    p.add_argument("--device", default="cpu", help="where a TorchScript model runs (cpu, cuda)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")

    sub.add_parser("methods", help="list protection methods and their parameters")
    return parser


COMMANDS = {"init": init.command, "run": run.command, "protect": run.command, "fit": fit.command,
            "check": check.command, "inspect": inspect.command, "report": report.command,
            "evaluate": evaluate.command, "verify": verify.command, "restore": restore.command,
            "methods": methods.command,
            "config-schema": schema.command, "completion": completion.command}


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
        return _fail(args, EXIT_CONFIG, "invalid_config", f"invalid configuration\n{exc}",
                     problems=list(exc.problems))
    except FidelityCheckFailed as exc:
        return _fail(args, EXIT_GATE, "gate_failed", f"fidelity gate failed: {exc}")
    except IngestError as exc:
        return _fail(args, EXIT_PARTIAL, "input_problem", f"input problem [{exc.reason}]: {exc}")
    except MedueError as exc:
        return _fail(args, EXIT_ERROR, "error", str(exc))
    except BrokenPipeError:  # output piped into `head` and the like
        return EXIT_OK
    except OSError as exc:  # disk full, read-only output, permissions: say so, no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        hint = {28: "free disk space or choose another output folder", 30: "the output folder is read-only",
                13: "check the permissions of the output folder"}.get(exc.errno or 0, "")
        event = "disk_full" if exc.errno == 28 else "os_error"
        return _fail(args, EXIT_ERROR, event, f"{exc.strerror or exc}{where}" + (f"; {hint}" if hint else ""))
    except Exception as exc:  # faults that libraries word their own way: one line and an exit code
        said = _fault_line(exc)
        if said is None:
            raise
        event = "disk_full" if "disk is full" in said else "tracking_failed"
        return _fail(args, EXIT_ERROR, event, said.removeprefix("medue: "))


def _fail(args: argparse.Namespace, code: int, event: str, message: str, problems: list[str] | None = None) -> int:
    """Every failure said one way: one line on stderr (one JSON object with ``event`` under ``--log-json``) and, with
    ``--summary-json``, the summary object on stdout all the same (its ``exit_code`` and ``error``)."""
    import datetime as _dt

    if getattr(args, "log_json", False):  # a log collector gets one object, the problems as a list, not prose
        record = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(), "level": "error", "logger": "medue",
                  "event": event, "message": message.splitlines()[0]}
        if problems is not None:
            record["problems"] = problems
        print(json.dumps(record), file=sys.stderr)
    else:
        print(f"medue: {message}", file=sys.stderr)
    if getattr(args, "summary_json", False):
        print(json.dumps({"release": None, "exit_code": code, "error": event, "message": message.splitlines()[0],
                          **({"problems": problems} if problems is not None else {})}))
    return code


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
