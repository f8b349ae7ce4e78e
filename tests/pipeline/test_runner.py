import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medue.errors import InvalidConfigError
from medue.io.delta import restore_original
from medue.pipeline.config import load_config
from medue.pipeline.executor import parse_shard, select_shard
from medue.pipeline.runner import EXIT_GATE, EXIT_OK, EXIT_PARTIAL, run_pipeline
from medue.provenance import sha256_file


def test_end_to_end_outputs_manifest_report(tiny_config):
    cfg = load_config(tiny_config())
    summary = run_pipeline(cfg)
    assert summary.exit_code == EXIT_OK and summary.counts["done"] == 2
    release = cfg.output_path / "release"
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["schema"] == "medue.manifest/1" and len(manifest["items"]) == 2
    for entry in manifest["items"]:
        for out in entry["outputs"]:
            assert sha256_file(release / out["path"]) == out["sha256"]
        assert entry["fidelity"]["max_abs_units"] <= 4
    sums = (release / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 5 + 3  # 4 DICOM slices + 1 NIfTI, and manifest.json, report.json, report.html
    assert "test-key-123-long-enough" not in (release / "manifest.json").read_text()
    assert "test-key-123-long-enough" not in (release / "report.json").read_text()
    # the input folder's name (could carry PHI) never reaches the release
    assert "series_a" not in (release / "report.json").read_text() + (release / "manifest.json").read_text()
    # the DICOM output is a derived series
    dcm = [pydicom.dcmread(p) for p in sorted((release).glob("*/slice_*.dcm"))]
    assert dcm and all(d.ImageType[0] == "DERIVED" for d in dcm)
    # what stays at the site is the owner's alone (paths, deltas, copies of inputs)
    for folder in ("private", "quarantine"):
        assert (cfg.output_path / folder).stat().st_mode & 0o777 == 0o700


def test_reversible_delta_restores_original(tiny_config):
    cfg = load_config(tiny_config())
    run_pipeline(cfg)
    import nibabel as nib

    marker = next(json.loads(p.read_text()) for p in (cfg.output_path / "markers").glob("*.json")
                  if json.loads(p.read_text())["format"] == "nifti")
    out = nib.load(str(cfg.output_path / "release" / marker["outputs"][0]["path"]))
    protected = np.asanyarray(out.dataobj.get_unscaled()).transpose(2, 1, 0)
    original = restore_original(protected, cfg.output_path / marker["delta"]["path"])
    src = nib.load(str(cfg.input_path / "vol.nii.gz"))
    assert np.array_equal(original, np.asanyarray(src.dataobj.get_unscaled()).transpose(2, 1, 0))
    assert not np.array_equal(original, protected)


def test_gate_failure_blocks_export_unless_override(tiny_config):
    cfg = load_config(tiny_config(fidelity={"min_psnr_db": 200}))
    summary = run_pipeline(cfg)
    assert summary.exit_code == EXIT_GATE and summary.counts["gate_failed"] == 2
    assert not list((cfg.output_path / "release").glob("*.nii*"))
    cfg = load_config(tiny_config(fidelity={"min_psnr_db": 200, "override_reason": "research release, PI approved",
                                            "override_by": "dr.who"}, output=str(cfg.output_path) + "2"))
    summary = run_pipeline(cfg)
    assert summary.exit_code == EXIT_OK
    manifest = json.loads((cfg.output_path / "release" / "manifest.json").read_text())
    assert all(i["override"]["reason"] == "research release, PI approved" for i in manifest["items"])


def _efficacy_json(path, drop, **param_overrides):
    from medue.protect import build_protector
    from medue.testing import make_release_efficacy

    # the parameters as the fitted protector records them (`surrogate: auto` resolved for the 16 px fit)
    params = build_protector("salm-samplewise", **{"epsilon": 4, "mask_ratio": 0.1, "max_rounds": 1, "inner_steps": 2,
                                        "train_steps": 2, "surrogate": "small", **param_overrides}).params()
    # the data of the release under test: one unlabelled 24 px CT series (SERIES below)
    path.write_text(json.dumps(make_release_efficacy("salm-samplewise", params, drop=drop, modality="CT", image_size=(24, 24),
                                                     classes=())))
    return str(path)


def _series(tmp_path):
    """The tiny_config's CT series alone as the input (a release whose data an efficacy result can match)."""
    return str(tmp_path / "in" / "series_a")


def test_diagnostic_check_blocks_release_unless_override(tiny_config, tmp_path):
    bad = _efficacy_json(tmp_path / "bad.json", 0.15)
    cfg = load_config(tiny_config(input=_series(tmp_path), report={"enabled": True, "efficacy_results": bad}))
    summary = run_pipeline(cfg)
    assert summary.exit_code == EXIT_GATE and summary.blocked and not summary.counts.get("done")
    assert {p.name for p in (cfg.output_path / "release").iterdir()} <= {
        "report.json", "report.html", "manifest.json", "SHA256SUMS"}
    report = json.loads((cfg.output_path / "release" / "report.json").read_text())
    check = next(c for c in report["conformance"] if c["check"].startswith("diagnostic content preserved"))
    assert check["result"] == "fail" and check["architecture"] == "resnet18" and check["accuracy_drop"] == 0.15
    assert "synthetic-set" in check["evidence"] and "method salm" in check["evidence"]
    assert "diagnostic content preserved" in (cfg.output_path / "release" / "report.html").read_text()

    cfg = load_config(tiny_config(input=_series(tmp_path), report={"enabled": True, "efficacy_results": bad},
                                  output=str(tmp_path / "o2"),
                                  fidelity={"override_reason": "accepted by the imaging board", "override_by": "pi"}))
    summary = run_pipeline(cfg)
    assert summary.exit_code == EXIT_OK and summary.counts["done"] == 1
    assert summary.release_checks[0]["override"]["by"] == "pi"

    good = _efficacy_json(tmp_path / "good.json", 0.01)
    cfg = load_config(tiny_config(input=_series(tmp_path), report={"enabled": True, "efficacy_results": good},
                                  output=str(tmp_path / "o3")))
    summary = run_pipeline(cfg)
    assert summary.exit_code == EXIT_OK and summary.release_checks[0]["result"] == "pass"
    verdict = json.loads(summary.report_json.read_text())["efficacy_verdict"]
    assert verdict["applies"] and verdict["protects_against"][0].startswith("resnet18_flip_crop: worst seed 0.500")
    line = json.loads(summary.report_json.read_text())["verdict_line"]
    assert line.startswith("MEASURED on release files of this setting (synthetic-set): stops 1 of 1 everyday ways")
    assert "held near chance" in line


def test_evidence_of_another_dataset_is_borrowed_never_pass(tiny_config, tmp_path):
    # the result matches method and parameters, and would pass; but it measured 24 px CT without labels, and this
    # release holds a CT series and a NIfTI volume of other sizes
    good = _efficacy_json(tmp_path / "good.json", 0.0)
    cfg = load_config(tiny_config(report={"enabled": True, "efficacy_results": good}))
    summary = run_pipeline(cfg)
    check = summary.release_checks[0]
    assert check["result"] == "not tested" and summary.exit_code == EXIT_OK
    assert check["note"].startswith("evidence from synthetic-set, not measured on this release")
    assert "modality CT there, CT, OT here" in check["note"] and "image size 24x24 there" in check["note"]
    report = json.loads(summary.report_json.read_text())
    verdict = report["efficacy_verdict"]
    assert not verdict["applies"] and verdict["protects_against"] == [] == verdict["does_not_protect_against"]
    assert "resnet18_flip_crop (measured on other data: 0.500)" in verdict["not_tested"]
    assert any("pretrained" in t for t in verdict["not_tested"])
    page = summary.report_html.read_text()
    assert "evidence from synthetic-set, not measured on this release" in page
    assert "Nothing below is a measurement of this release" in page
    # the verdict line a board reads first says so, in the JSON, at the top of the page and in `medue report`
    assert report["verdict_line"].startswith("NOT MEASURED ON THIS RELEASE: the attached result is evidence from "
                                             "synthetic-set")
    assert page.index("Verdict:") < page.index("<h2>Summary</h2>")


def test_results_for_other_parameters_are_not_tested_and_missing_results_are_a_config_error(tiny_config, tmp_path):
    other = _efficacy_json(tmp_path / "other.json", 0.15, epsilon=8)
    cfg = load_config(tiny_config(report={"enabled": True, "efficacy_results": other}))
    summary = run_pipeline(cfg)
    check = summary.release_checks[0]
    assert check["result"] == "not tested" and "epsilon: 8 there, 4 here" in check["note"]
    assert summary.exit_code == EXIT_OK  # never "pass", never a block on numbers that are not this release's
    report = json.loads(summary.report_json.read_text())
    assert report["efficacy_verdict"]["applies"] is False
    assert "not measured for this release" in summary.report_html.read_text()
    cfg = load_config(tiny_config(report={"enabled": True, "efficacy_results": str(tmp_path / "nope.json")},
                                  output=str(tmp_path / "o4")))
    with pytest.raises(InvalidConfigError, match="does not exist"):
        run_pipeline(cfg)


def test_resume_skips_done_and_is_deterministic(tiny_config):
    cfg = load_config(tiny_config())
    first = run_pipeline(cfg)
    hashes = {m.item_id: [o["sha256"] for o in m.outputs] for m in first.markers}
    again = run_pipeline(cfg, resume=True)
    assert again.counts["skipped"] == 2
    # a fresh run with the same key re-creates byte-identical protected pixels and keyed UIDs
    fresh = load_config(tiny_config(output=str(cfg.output_path) + "_fresh"))
    third = run_pipeline(fresh)
    nifti = lambda s: next(m for m in s.markers if m.format == "nifti")  # noqa: E731
    assert [o["sha256"] for o in nifti(third).outputs] == hashes[nifti(first).item_id]


def test_shards_partition_items(tiny_config):
    from medue.io import discover_inputs

    items = discover_inputs(load_config(tiny_config()).input_path)
    parts = [select_shard(items, (i, 3)) for i in range(3)]
    assert sorted(it.item_id for p in parts for it in p) == sorted(it.item_id for it in items)
    assert parse_shard("1/4") == (1, 4)
    import pytest

    from medue.errors import InvalidConfigError

    with pytest.raises(InvalidConfigError, match="i/N"):
        parse_shard("one of four")


def test_process_pool_matches_serial(tiny_config):
    serial = run_pipeline(load_config(tiny_config()))
    pooled = run_pipeline(load_config(tiny_config(output=str(serial.output) + "_pool",
                                                  execution={"workers": 2})))
    key = lambda s: sorted((m.item_id, [o["sha256"] for o in m.outputs]) for m in s.markers)  # noqa: E731
    # NIfTI bytes are fully determined by pixels; DICOM files carry a creation time, so compare NIfTI only
    nif = lambda s: [k for k in key(s) if k[1] and len(k[1]) == 1]  # noqa: E731
    assert nif(serial) == nif(pooled) and pooled.counts["done"] == 2


def test_read_ahead_matches_serial_and_quarantines_a_bad_read(tiny_config):
    cfg = load_config(tiny_config())
    (cfg.input_path / "broken.nii.gz").write_bytes(b"not a NIfTI file at all" * 10)
    serial = run_pipeline(cfg)
    ahead_cfg = load_config(tiny_config(output=str(cfg.output_path) + "_ahead", execution={"read_ahead": True}))
    ahead = run_pipeline(ahead_cfg)
    assert serial.counts == ahead.counts and ahead.counts["quarantined"] == 1 and ahead.counts["done"] == 2
    by_id = lambda s: {m.item_id: m for m in s.markers}  # noqa: E731
    for item_id, m in by_id(ahead).items():
        other = by_id(serial)[item_id]
        assert m.status == other.status and m.reason == other.reason
        if m.status == "done":
            assert m.read_ahead is True and m.fidelity == other.fidelity
            if m.format == "nifti":  # DICOM files carry a creation time; NIfTI bytes are the pixels
                assert [o["sha256"] for o in m.outputs] == [o["sha256"] for o in other.outputs]
    again = run_pipeline(ahead_cfg, resume=True)  # every item has its final marker: none is read again
    assert again.counts["skipped"] == 3


def test_kill_9_then_resume_finishes_exactly_once(tmp_path):
    from medue.testing import make_nifti

    inputs = tmp_path / "in"
    for k in range(8):
        make_nifti(inputs / f"v{k}.nii", shape=(32, 32, 6), seed=k)
    (tmp_path / "k").write_text("kill-test-key-0123456789")
    cfg = {"name": "kill", "input": str(inputs), "output": str(tmp_path / "out"),
           "key": {"env": "MEDUE_UNSET", "file": str(tmp_path / "k")},
           "protect": {"method": "salm-samplewise", "params": {"epsilon": 3, "max_rounds": 1, "inner_steps": 6, "train_steps": 1},
                       "fit_max_slices": 8, "fit_size": 16},
           "fidelity": {"min_psnr_db": 10, "min_ssim": 0.1}, "execution": {"device": "cpu"},
           "tracking": {"enabled": False}, "report": {"enabled": False}}
    path = tmp_path / "p.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "medue.cli", "run", str(path), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = tmp_path / "out" / "markers"
    deadline = time.time() + 120
    while time.time() < deadline and not (markers.exists() and any(markers.glob("*.json"))):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(markers.glob("*.json")))
    assert 1 <= done_before <= 8
    assert subprocess.run([*cmd, "--resume"], timeout=300).returncode == 0
    outs = sorted(p.name for p in (tmp_path / "out" / "release").glob("*.nii"))
    assert len(outs) == 8 and len(set(outs)) == 8
    assert not list((tmp_path / "out").rglob("*.partial-*"))
    manifest = json.loads((tmp_path / "out" / "release" / "manifest.json").read_text())
    assert len(manifest["items"]) == 8 and all(i["status"] == "done" for i in manifest["items"])


def _kill_config(tmp_path, name: str) -> Path:
    import yaml

    from medue.testing import make_nifti

    inputs = tmp_path / "in"
    if not inputs.exists():
        for k in range(6):
            make_nifti(inputs / f"v{k}.nii", shape=(32, 32, 6), seed=k)
        (tmp_path / "k").write_text("kill-test-key-0123456789")
    cfg = {"name": "kill", "input": str(inputs), "output": str(tmp_path / name),
           "key": {"env": "MEDUE_UNSET", "file": str(tmp_path / "k")},
           "protect": {"method": "salm-samplewise", "params": {"epsilon": 3, "max_rounds": 1, "inner_steps": 6, "train_steps": 1},
                       "fit_max_slices": 8, "fit_size": 16},
           "fidelity": {"min_psnr_db": 10, "min_ssim": 0.1}, "execution": {"device": "cpu"},
           "tracking": {"enabled": False}, "report": {"enabled": True}}
    path = tmp_path / f"{name.replace('/', '_')}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


#: Where a run is killed: the first file of each stage, relative to the output folder.
KILL_STAGES = {"fit": "private/inputs.local.json", "noise saved": "private/protector.pt",
               "export": "markers/*.json", "manifest": "release/manifest.json"}


@pytest.mark.parametrize("stage", list(KILL_STAGES))
def test_kill_at_each_stage_then_resume_gives_the_uninterrupted_release(tmp_path, stage):
    reference = _kill_config(tmp_path, "reference")
    cmd = [sys.executable, "-m", "medue.cli", "run"]
    assert subprocess.run([*cmd, str(reference), "--quiet"], timeout=300).returncode == 0
    killed = _kill_config(tmp_path, "killed")
    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, str(killed), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(out.glob(KILL_STAGES[stage])):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert subprocess.run([*cmd, str(killed), "--quiet", "--resume"], timeout=300).returncode == 0

    def release(root: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / "release").glob("*.nii")}

    assert release(out) == release(tmp_path / "reference") and len(release(out)) == 6
    assert not list(out.rglob("*.partial-*")) and not (out / ".medue.lock").exists()
    items = json.loads((out / "release" / "manifest.json").read_text())["items"]
    assert sorted(i["status"] for i in items) == ["done"] * 6
    assert (out / "report" / "report.json").exists() or list(out.rglob("report.json"))


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_a_real_full_disk_gives_one_line_and_a_bigger_disk_plus_resume_the_full_release(tmp_path):
    """The output on a tmpfs too small for the release (root only: skipped where mount is not allowed)."""
    import shutil

    mnt = tmp_path / "mnt"
    if os.geteuid() != 0 or not _mount_tmpfs(mnt, "400k"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        reference = _kill_config(tmp_path, "reference")
        cmd = [sys.executable, "-m", "medue.cli", "run"]
        assert subprocess.run([*cmd, str(reference), "--quiet"], timeout=300).returncode == 0
        small = _kill_config(tmp_path, "mnt/out")
        full = subprocess.run([*cmd, str(small), "--quiet"], capture_output=True, text=True, timeout=300)
        assert full.returncode != 0 and "Traceback" not in full.stderr
        assert "disk" in full.stderr.lower() or "space" in full.stderr.lower(), full.stderr
        saved = tmp_path / "saved"
        shutil.copytree(mnt / "out", saved, symlinks=True)
        subprocess.run(["umount", str(mnt)], check=True)
        assert _mount_tmpfs(mnt, "8m")
        shutil.copytree(saved, mnt / "out", symlinks=True)
        resumed = subprocess.run([*cmd, str(small), "--quiet", "--resume"], capture_output=True, text=True,
                                 timeout=300)
        assert resumed.returncode == 0, resumed.stderr

        def release(root: Path) -> dict[str, str]:
            return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / "release").glob("*.nii")}

        assert release(mnt / "out") == release(tmp_path / "reference") and len(release(mnt / "out")) == 6
        assert not list((mnt / "out").rglob("*.partial-*"))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_resume_refuses_another_key_or_params_and_ignores_execution(tiny_config, tmp_path):
    cfg = load_config(tiny_config())
    assert run_pipeline(cfg).exit_code == EXIT_OK
    # execution settings do not change what is released: resume reuses the fit
    again = load_config(tiny_config(execution={"device": "cpu", "workers": 2}))
    assert again.config_hash() == cfg.config_hash()
    summary = run_pipeline(again, resume=True)
    assert summary.exit_code == EXIT_OK and summary.counts["skipped"] == 2
    with pytest.raises(InvalidConfigError, match="different protector parameters"):
        run_pipeline(load_config(tiny_config(protect={"params": {"epsilon": 3, "max_rounds": 1, "inner_steps": 2,
                                                                 "train_steps": 2}})), resume=True)
    (tmp_path / "other.key").write_text("another-key-of-enough-length-42")
    with pytest.raises(InvalidConfigError, match="different key"):
        run_pipeline(load_config(tiny_config(key={"env": "MEDUE_TEST_UNSET_KEY",
                                                  "file": str(tmp_path / "other.key")})), resume=True)


def test_resume_rebuilds_a_deleted_output(tiny_config):
    cfg = load_config(tiny_config())
    run_pipeline(cfg)
    release = cfg.output_path / "release"
    victim = next(release.glob("*.nii.gz"))
    victim.unlink()
    summary = run_pipeline(cfg, resume=True)
    assert victim.is_file() and summary.counts["skipped"] == 1 and summary.counts["done"] == 2
    sums = dict(line.split("  ")[::-1] for line in (release / "SHA256SUMS").read_text().splitlines())
    assert sums[victim.name] == sha256_file(victim)


def test_output_inside_input_missing_input_and_a_held_lock_are_refused(tiny_config, tmp_path):
    from medue.io.atomic import exclusive_lock

    cfg = load_config(tiny_config())
    with pytest.raises(InvalidConfigError, match="inside input"):
        run_pipeline(load_config(tiny_config(output=str(cfg.input_path / "out"))))
    with pytest.raises(InvalidConfigError, match="does not exist"):
        run_pipeline(load_config(tiny_config(input=str(tmp_path / "nowhere"), output=str(tmp_path / "o5"))))
    assert not (tmp_path / "o5").exists()
    with exclusive_lock(cfg.output_path):
        with pytest.raises(InvalidConfigError, match="another medue run"):
            run_pipeline(cfg)
        assert (cfg.output_path / ".medue.lock").read_text().strip() == str(os.getpid())  # the holder's
    assert not (cfg.output_path / ".medue.lock").exists()  # released: no lock file left behind
    # a run refused after taking the lock (a key that is too weak) leaves none either
    weak = tmp_path / "weak.key"
    weak.write_text("short")
    with pytest.raises(InvalidConfigError, match="key"):
        run_pipeline(load_config(tiny_config(key={"env": "MEDUE_TEST_UNSET_KEY", "file": str(weak)},
                                             output=str(tmp_path / "o6"))))
    assert not (tmp_path / "o6" / ".medue.lock").exists()
    assert run_pipeline(cfg).exit_code == EXIT_OK and not (cfg.output_path / ".medue.lock").exists()


def test_phi_in_file_and_folder_names_reaches_no_published_file(tiny_config, tmp_path):
    cfg = load_config(tiny_config())
    bad = cfg.input_path / "SMITH_JANE_MRN654321" / "SMITH_JANE_MRN654321.19600101.nii.gz"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00" * 100)  # unreadable: quarantined with the reader's message (which names the path)
    summary = run_pipeline(cfg)
    assert summary.counts["quarantined"] == 1
    for path in cfg.output_path.rglob("*"):
        if path.is_file() and "private" not in path.parts:
            assert "SMITH" not in path.name and "19600101" not in path.name
            data = path.read_bytes()
            assert b"SMITH" not in data and b"MRN654321" not in data and b"19600101" not in data, path
    index = (cfg.output_path / "private" / "inputs.local.json").read_text()
    assert "SMITH_JANE_MRN654321" in index  # the site-only index keeps the path


def test_every_input_file_is_exported_quarantined_or_listed_as_ignored(tiny_config):
    cfg = load_config(tiny_config())
    (cfg.input_path / ".hidden.dcm").write_bytes(b"DICM")
    (cfg.input_path / "notes.txt").write_text("scanner notes")
    (cfg.input_path / "scan.img").write_bytes(b"\x01" * 64)  # not skipped by name: read, then quarantined
    summary = run_pipeline(cfg)
    report = json.loads(summary.report_json.read_text())
    assert report["summary"]["ignored"] == 2 and summary.counts["quarantined"] == 1
    ignored = json.loads((cfg.output_path / "private" / "ignored.local.json").read_text())
    assert sorted(i["path"] for i in ignored) == [".hidden.dcm", "notes.txt"]
    files = [p for p in cfg.input_path.rglob("*") if p.is_file()]
    index = json.loads((cfg.output_path / "private" / "inputs.local.json").read_text())
    accounted = {p for entry in index.values() for p in entry["paths"]}
    accounted |= {str(cfg.input_path / i["path"]) for i in ignored}
    assert {str(p) for p in files} == accounted


def test_an_image_nothing_could_change_is_not_exported_as_protected(tiny_config, tmp_path):
    import nibabel as nib

    table = tmp_path / "labels.csv"
    table.write_text("path,label\nseries_a,a\nvol.nii.gz,b\nsaturated.nii,b\n")
    cfg = load_config(tiny_config(labels={"source": "table", "table": str(table)},
                                  protect={"params": {"epsilon": 4, "mode": "classwise", "placement": "flat",
                                                      "init": "grating", "tile": 4, "mask_ratio": 0.3,
                                                      "max_rounds": 0}}))
    img = nib.Nifti1Image(np.full((16, 16, 2), 255, dtype=np.uint8), np.eye(4))  # at the top of its range:
    nib.save(img, str(cfg.input_path / "saturated.nii"))  # positive noise is clipped away entirely
    summary = run_pipeline(cfg)
    bad = [m for m in summary.markers if m.status == "gate_failed"]
    assert len(bad) == 1 and "carries no protection" in bad[0].message and summary.exit_code == 3


def test_sha256sums_cover_outputs_manifest_and_reports(tiny_config):
    cfg = load_config(tiny_config())
    run_pipeline(cfg)
    release = cfg.output_path / "release"
    sums = dict(line.split("  ")[::-1] for line in (release / "SHA256SUMS").read_text().splitlines())
    assert {"manifest.json", "report.json", "report.html"} <= set(sums)
    assert all(sha256_file(release / name) == digest for name, digest in sums.items())
    listed = {str(p.relative_to(release)) for p in release.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert listed == set(sums)
    manifest = json.loads((release / "manifest.json").read_text())  # the manifest names the same files
    named = {o["path"] for i in manifest["items"] for o in i["outputs"]} | set(manifest["documents"])
    assert named == set(sums)


def test_resume_retries_items_that_failed_on_a_full_disk(tiny_config, monkeypatch, capsys):
    import errno

    import medue.pipeline.job as job
    from medue.cli import main

    reference = run_pipeline(load_config(tiny_config()))
    want = {m.item_id: [o["sha256"] for o in m.outputs] for m in reference.markers}
    cfg = load_config(tiny_config(output=str(reference.output) + "_faulty"))
    real = job.write_volume

    def full_disk(volume, out_path, **kw):
        if out_path.name.endswith(".nii.gz"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(volume, out_path, **kw)

    monkeypatch.setattr(job, "write_volume", full_disk)
    first = run_pipeline(cfg)
    assert first.counts.get("failed") == 1 and first.exit_code == EXIT_PARTIAL
    assert main(["report", str(cfg.output_path)]) == EXIT_PARTIAL
    assert "`medue run CONFIG --resume` retries exactly those items" in capsys.readouterr().out

    monkeypatch.setattr(job, "write_volume", real)  # a bigger disk
    lines: list[str] = []
    again = run_pipeline(cfg, resume=True, progress=lines.append)
    assert any("retrying 1 item(s) that failed" in line for line in lines)
    assert again.exit_code == EXIT_OK and again.counts == {"done": 2, "skipped": 1}
    got = {m.item_id: [o["sha256"] for o in m.outputs] for m in again.markers}
    nifti = next(m.item_id for m in again.markers if m.format == "nifti")
    assert got[nifti] == want[nifti]  # the retried item is byte-identical to an uninterrupted release's
    dicom = next(m for m in first.markers if m.status == "done")
    assert got[dicom.item_id] == [o["sha256"] for o in dicom.outputs]  # the done item was kept as it was


def test_a_key_file_others_can_read_is_warned_about(tiny_config, tmp_path):
    import logging

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.said: list[str] = []

        def emit(self, record):
            self.said.append(record.getMessage())

    keep = Keep()
    logging.getLogger("medue").addHandler(keep)  # whatever the CLI configured before in this process
    try:
        key = tmp_path / "site.key"
        key.chmod(0o644)
        run_pipeline(load_config(tiny_config()))
        assert any("readable by other users" in m and "chmod 600" in m for m in keep.said)
        key.chmod(0o600)
        keep.said.clear()
        run_pipeline(load_config(tiny_config(output=str(tmp_path / "o7"))))
        assert not any("readable by other users" in m for m in keep.said)
    finally:
        logging.getLogger("medue").removeHandler(keep)


def test_damaged_fit_artefacts_are_refitted_never_silently_replaced(tiny_config):
    cfg = load_config(tiny_config(protect={"fit_size": None, "fit_max_slices": None}))  # noise kept per item
    first = run_pipeline(cfg)
    private = cfg.output_path / "private"
    record = json.loads((private / "protector.json").read_text())
    assert record["noise_sha256"] and record["state_sha256"]  # every fit artefact carries its hash
    want = {m.item_id: m.outputs for m in first.markers}
    nifti = next(iter(record["noise_sha256"]))  # an item whose noise the fit kept

    state = private / "protector.pt"
    state.write_bytes(state.read_bytes()[:100])  # truncated
    noise = private / "noise" / f"{nifti}.npz"
    noise.unlink()  # one item's fitted noise deleted
    (cfg.output_path / "markers" / f"{nifti}.json").unlink()  # that item is exported again
    lines: list[str] = []
    again = run_pipeline(cfg, resume=True, progress=lines.append)
    said = "\n".join(lines)
    assert "protector.pt differs from its recorded SHA-256" in said and f"noise/{nifti}.npz is missing" in said
    assert "fitting again" in said and again.exit_code == EXIT_OK
    assert noise.is_file() and json.loads((private / "protector.json").read_text())["state_fingerprint"] == \
        record["state_fingerprint"]
    redone = next(m for m in again.markers if m.item_id == nifti)
    assert [o["sha256"] for o in redone.outputs] == [o["sha256"] for o in want[nifti]]  # the same noise


def test_no_path_of_any_config_field_reaches_a_published_or_tracked_file(tiny_config, tmp_path):
    pytest.importorskip("mlflow")
    table = tmp_path / "DOE_JOHN_MRN111111" / "labels.csv"
    table.parent.mkdir()
    table.write_text("path,label\nseries_a,ct\nvol.nii.gz,mr\n")
    key = tmp_path / "KEYS_ROE_MRN222222" / "site.key"
    key.parent.mkdir()
    key.write_text("another-secret-key-9876543210")
    key.chmod(0o600)
    out = tmp_path / "RELEASE_POE_MRN333333"
    cfg = load_config(tiny_config(output=str(out), labels={"source": "table", "table": str(table)},
                                  key={"env": "MEDUE_TEST_UNSET_KEY", "file": str(key)},
                                  tracking={"enabled": True}))
    summary = run_pipeline(cfg)
    assert summary.exit_code == EXIT_OK and summary.mlflow_run_id
    planted = [b"MRN111111", b"MRN222222", b"MRN333333", b"another-secret-key-9876543210", b"DOE_JOHN"]
    scanned = 0
    for path in out.rglob("*"):  # the release, the markers, the MLflow store and its artifacts: all but private/
        if path.is_file() and "private" not in path.relative_to(out).parts and path.name != ".medue.lock":
            data = path.read_bytes()
            scanned += 1
            # MLflow's own store records where its artifacts lie (under the output folder): that location is
            # MLflow's, not a config value, and stays out of this check (issue #27 keeps it open)
            found = [p for p in planted if p in data and not (p == b"MRN333333" and path.name == "mlflow.db")]
            assert not found, (path, found)
    assert scanned > 10 and (out / "mlflow" / "mlflow.db").is_file()


def test_a_withdrawn_item_leaves_the_release_and_a_stray_file_fails_the_run(tiny_config, tmp_path):
    cfg = load_config(tiny_config())
    assert run_pipeline(cfg).exit_code == EXIT_OK
    release = cfg.output_path / "release"
    nifti = next(json.loads(p.read_text()) for p in (cfg.output_path / "markers").glob("*.json")
                 if json.loads(p.read_text())["format"] == "nifti")
    out_file = release / nifti["outputs"][0]["path"]
    assert out_file.is_file()
    (cfg.input_path / "vol.nii.gz").unlink()  # consent withdrawn: the input leaves the folder
    summary = run_pipeline(cfg)
    assert summary.exit_code == EXIT_OK and not out_file.exists()
    assert not (cfg.output_path / "markers" / f"{nifti['item_id']}.json").exists()
    manifest = (release / "manifest.json").read_text()
    assert nifti["item_id"] not in manifest and nifti["outputs"][0]["path"] not in (release / "SHA256SUMS").read_text()
    check = summary.release_checks[-1]
    assert check["result"] == "pass" and check["withdrawn"] == [nifti["item_id"]]
    report = json.loads((release / "report.json").read_text())
    assert any(c.get("withdrawn") == [nifti["item_id"]] for c in report["conformance"])
    assert all(i["item_id"] != nifti["item_id"] for i in report["items"])
    # a file nobody listed (a restored original put there by hand) is named and fails the run
    (release / "restored.nii.gz").write_bytes(b"not published by medue")
    summary = run_pipeline(cfg, resume=True)
    assert summary.exit_code == EXIT_GATE
    assert summary.release_checks[-1]["stray_files"] == ["restored.nii.gz"]
    assert "restored.nii.gz" not in (release / "SHA256SUMS").read_text()


def test_a_minimum_protected_fraction_fails_the_run_when_the_gate_weakened_too_many():
    from medue.pipeline.runner import RunSummary, protected_fraction_check
    from medue.records import ItemMarker

    full = {"protection": {"params": {"epsilon": 8}, "stats": {"linf_units": 8}}, "fidelity": {"passed": True}}
    markers = [ItemMarker(item_id="a", status="done", **full), ItemMarker(item_id="b", status="done", **full),
               ItemMarker(item_id="c", status="done", adapted={"kept_fraction": 0.5}, **full),
               ItemMarker(item_id="d", status="done", unchanged_on_purpose="blank class")]
    check = protected_fraction_check(markers, 0.9)  # 2 of the 3 patterned items: 67 %
    assert check["result"] == "fail" and check["below_minimum"] and check["fraction"] == 0.6667
    assert "2 of 3 patterned item(s)" in check["note"] and "1 were weakened" in check["note"]
    assert RunSummary(counts={"done": 4}, release_checks=[check]).exit_code == 3
    ok = protected_fraction_check(markers, 0.5)
    assert ok["result"] == "pass" and RunSummary(counts={"done": 4}, release_checks=[ok]).exit_code == 0


def test_min_protected_fraction_is_checked_by_a_run_and_leaves_older_config_hashes_alone(tiny_config):
    cfg = load_config(tiny_config(fidelity={"min_protected_fraction": 1.0}))
    assert load_config(tiny_config()).config_hash() != cfg.config_hash()
    unset = load_config(tiny_config(fidelity={"min_protected_fraction": None}))
    assert unset.config_hash() == load_config(tiny_config()).config_hash()  # a release of before resumes
    summary = run_pipeline(cfg)
    check = next(c for c in summary.release_checks if "min_protected_fraction" in c["check"])
    assert check["result"] == ("pass" if check["fraction"] >= 1.0 else "fail")
    assert summary.exit_code == (0 if check["result"] == "pass" else 3)
