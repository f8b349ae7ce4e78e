"""SHA-256 of every file a release wrote, with the wall clock frozen, to show that a refactoring changed no byte.

DICOM outputs carry their creation time (InstanceCreationDate/Time, ContributionDateTime) and the manifest and
reports their ``created`` time; with the clock frozen at one instant those are the same in both runs, so two
commits can be compared file by file:

    PYTHONPATH=<worktree of commit A> python benchmarks/release_bytes.py pipelines/default.yaml --out /tmp/a.json
    PYTHONPATH=<worktree of commit B> python benchmarks/release_bytes.py pipelines/default.yaml --out /tmp/b.json
    diff /tmp/a.json /tmp/b.json

Each run writes its release into the same temporary folder (the output folder is part of nothing that is
written, but one path keeps the comparison free of doubt), then removes it. ``environment`` in report.json lists
installed versions and ``fit_seconds`` a duration: both are left out of the report's hash and listed apart.
"""
import argparse
import datetime as _dt
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

FROZEN = _dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=_dt.timezone.utc)


class _FrozenDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):  # noqa: D102
        return FROZEN if tz is not None else FROZEN.replace(tzinfo=None)


class _FrozenModule:
    """``datetime`` the module, with ``datetime.now`` frozen."""

    def __getattr__(self, name):
        return _FrozenDatetime if name == "datetime" else getattr(_dt, name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path)
    p.add_argument("--out", type=Path, required=True, help="JSON of file -> SHA-256")
    a = p.parse_args()
    import importlib

    from medue.pipeline.config import load_config
    from medue.pipeline.runner import run_pipeline

    # the modules that read the clock (medue.io.dicom wrote DICOM until the writer moved to dicom_derive)
    for name in ("medue.io.dicom", "medue.io.dicom_derive", "medue.audit.manifest", "medue.audit.report"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "_dt"):
            module._dt = _FrozenModule()
    work = Path(tempfile.gettempdir()) / "medue-release-bytes"
    shutil.rmtree(work, ignore_errors=True)
    config = load_config(a.config, overrides={"output": str(work), "tracking": {"enabled": False}})
    summary = run_pipeline(config, show_bar=False)
    files = {}
    volatile = {}
    for f in sorted((work / "release").rglob("*")):
        if not f.is_file():
            continue
        rel = f.relative_to(work / "release").as_posix()
        data = f.read_bytes()
        if rel in ("report.json", "report.html", "SHA256SUMS"):
            if rel == "report.json":
                doc = json.loads(data)
                volatile = {"environment": doc.pop("environment", None),
                            "fit_seconds": doc.get("protector", {}).pop("fit_seconds", None)}
                data = json.dumps(doc, sort_keys=False).encode()
                rel += " (without environment and fit_seconds)"
            elif rel == "SHA256SUMS":  # report.json's line names the hash of its bytes, fit_seconds included
                data = b"\n".join(line for line in data.splitlines() if not line.endswith(b"report.json"))
                rel += " (without report.json's line)"
            else:
                rel += " (embeds report.json's figures: compare the others first)"
        files[rel] = hashlib.sha256(data).hexdigest()
    a.out.write_text(json.dumps({"exit_code": summary.exit_code, "files": files, "volatile": volatile}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    print(f"{len(files)} file(s) -> {a.out}")


if __name__ == "__main__":
    main()
