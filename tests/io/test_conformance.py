"""DICOM conformance of released files: dciodvfy (Debian's dicom3tools) finds no error or warning in an output
that its input did not already have. Skipped, saying why, where dciodvfy is not installed (`.ci/run` installs it
when apt is available)."""

import re
import shutil
import subprocess

import pydicom
import pytest
import yaml

from medue.pipeline.config import parse_config
from medue.pipeline.runner import run_pipeline

DCIODVFY = shutil.which("dciodvfy")


def _findings(path) -> set[str]:
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    # drop the file name and element values that differ between input and output by design (UIDs, dates)
    return {re.sub(r"\s+", " ", ln.strip()) for ln in lines if ln.startswith(("Error", "Warning"))}


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed (apt-get install dicom3tools)")
def test_released_dicom_has_no_new_dciodvfy_findings(tmp_path):
    cfg = yaml.safe_load(open("pipelines/default.yaml"))
    cfg.update(output=str(tmp_path / "out"), tracking={"enabled": False},
               report={"enabled": False, "efficacy_results": None})
    summary = run_pipeline(parse_config(cfg))
    sources = {}
    for f in sorted(p for p in __import__("pathlib").Path("sample_data/images").rglob("*.dcm")):
        sources[str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)] = f
    outputs = sorted((tmp_path / "out" / "release").rglob("*.dcm"))
    assert outputs and summary.counts.get("done", 0) >= 2
    new = {}
    for out in outputs:
        ref = pydicom.dcmread(out, stop_before_pixels=True).SourceImageSequence[0].ReferencedSOPInstanceUID
        added = _findings(out) - _findings(sources[str(ref)])
        if added:
            new[out.name] = sorted(added)
    assert not new, new
