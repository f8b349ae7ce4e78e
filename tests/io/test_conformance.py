"""DICOM conformance of released files: dciodvfy (Debian's dicom3tools) finds no error or warning in an output
that its input did not already have. Skipped, saying why, where dciodvfy is not installed (`.ci/run` installs it
when apt is available)."""

import json
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
    index = json.loads((tmp_path / "out" / "private" / "inputs.local.json").read_text())
    pairs = []  # (output file, its source file), from each item's marker and the site-only input index
    for m in summary.markers:
        if m["status"] != "done" or index[m["item_id"]]["kind"] != "dicom":
            continue
        sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                   for p in index[m["item_id"]]["paths"]}
        for o in m["outputs"]:
            out = tmp_path / "out" / "release" / o["path"]
            ds = pydicom.dcmread(out, stop_before_pixels=True)
            refs = list(ds.get("SourceImageSequence", []))
            for frame in ds.get("PerFrameFunctionalGroupsSequence", [])[:1]:
                refs += [r for d in frame.get("DerivationImageSequence", []) for r in d.SourceImageSequence]
            uid = str(refs[0].ReferencedSOPInstanceUID) if refs else next(iter(sources))
            pairs.append((out, sources[uid]))
    assert len(pairs) >= 6  # 4 CT slices, the JPEG 2000 MR and the enhanced multi-frame MR
    assert any(int(pydicom.dcmread(o, stop_before_pixels=True).get("NumberOfFrames", 1) or 1) > 1 for o, _ in pairs)
    new = {}
    for out, src in pairs:
        added = _findings(out) - _findings(src)
        if added:
            new[out.name] = sorted(added)
    assert not new, new
