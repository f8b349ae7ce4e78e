import json

import pytest

from medue.cli import EXIT_CONFIG, EXIT_OK, EXIT_PARTIAL, main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("run", "protect", "check", "report", "evaluate", "inspect", "restore", "methods", "exit codes"):
        assert cmd in out


def test_run_check_report_inspect(tiny_config, capsys):
    cfg = tiny_config()
    assert main(["check", str(cfg)]) == EXIT_OK
    assert "config OK" in capsys.readouterr().out
    assert main(["run", str(cfg), "--quiet"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "done 2" in out and "report.html" in out
    import yaml

    output = yaml.safe_load(cfg.read_text())["output"]
    assert main(["report", output]) == EXIT_OK
    assert "PSNR" in capsys.readouterr().out
    assert main(["run", str(cfg), "--quiet", "--resume"]) == EXIT_OK
    assert "skipped 2" in capsys.readouterr().out
    assert main(["inspect", yaml.safe_load(cfg.read_text())["input"]]) == EXIT_OK


def test_invalid_config_exit_code_lists_problems(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ninput: i\noutput: o\nprotect: {method: slam}\nexecution: {workers: 0}\n")
    assert main(["run", str(p)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "did you mean 'salm'" in err and "workers: must be >= 1" in err and "2 problem(s)" in err


def test_partial_batch_exit_code(tiny_config, tmp_path):
    cfg = tiny_config()

    (tmp_path / "in" / "junk.bin").write_bytes(b"not an image")
    assert main(["run", str(cfg), "--quiet"]) == EXIT_PARTIAL


def test_methods_lists_all(capsys):
    assert main(["methods"]) == EXIT_OK
    out = capsys.readouterr().out
    assert all(k in out for k in ("salm", "em", "sem", "conv", "uc"))


def test_restore_command(tiny_config, tmp_path, capsys, monkeypatch):

    monkeypatch.setenv("MEDUE_KEY", (tmp_path / "site.key").read_text())
    cfg = tiny_config()
    main(["run", str(cfg), "--quiet"])
    out = tmp_path / "out"
    marker = next(json.loads(p.read_text()) for p in (out / "markers").glob("*.json")
                  if json.loads(p.read_text()).get("format") == "nifti")
    restored = tmp_path / "restored.nii.gz"
    assert main(["restore", str(out / "release" / marker["outputs"][0]["path"]), str(out / marker["delta"]["path"]),
                 str(restored)]) == EXIT_OK
    from medue.io.nifti import read_nifti

    assert (read_nifti(restored).array == read_nifti(tmp_path / "in" / "vol.nii.gz").array).all()
    protected_file = out / "release" / marker["outputs"][0]["path"]
    delta_file = out / marker["delta"]["path"]
    before = protected_file.read_bytes()
    # never overwrites without --force, never the protected input, and a malformed delta is one line
    capsys.readouterr()
    assert main(["restore", str(protected_file), str(delta_file), str(restored)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["restore", str(protected_file), str(delta_file), str(restored), "--force"]) == EXIT_OK
    assert main(["restore", str(protected_file), str(delta_file), str(protected_file), "--force"]) == 2
    assert protected_file.read_bytes() == before
    capsys.readouterr()
    assert main(["restore", str(protected_file), str(delta_file), str(tmp_path / "restored.dcm")]) == 2
    assert "keeps its format" in capsys.readouterr().err and not list(tmp_path.glob("restored*.dcm"))
    for bad in (b"", b"PK\x03\x04 truncated", b"not a zip at all"):
        (tmp_path / "bad.npz").write_bytes(bad)
        capsys.readouterr()
        assert main(["restore", str(protected_file), str(tmp_path / "bad.npz"), str(tmp_path / "x.nii.gz")]) == 2
        err = capsys.readouterr().err
        assert "not a readable medue delta" in err and "Traceback" not in err
    # a DICOM series: its release folder and its delta give the source's stored values, bit for bit
    from medue.io.dicom import read_dicom_series

    dicom = next(json.loads(p.read_text()) for p in (out / "markers").glob("*.json")
                 if json.loads(p.read_text()).get("format") == "dicom")
    series = (out / "release" / dicom["outputs"][0]["path"]).parent
    assert main(["restore", str(series), str(out / dicom["delta"]["path"]), str(tmp_path / "restored_series")]) == 0
    restored_files = sorted((tmp_path / "restored_series").iterdir())
    source = read_dicom_series(sorted((tmp_path / "in" / "series_a").iterdir()))
    back = read_dicom_series(restored_files, deidentification="ignore")
    protected = read_dicom_series(sorted(series.iterdir()), deidentification="ignore")
    assert back.array.dtype == source.array.dtype and (back.array == source.array).all()
    assert (protected.array != source.array).any()
    assert main(["restore", str(series), str(out / dicom["delta"]["path"]), str(tmp_path / "restored_series")]) == 2


def test_report_summary_exit_codes_and_restore_errors(tiny_config, tmp_path, capsys, monkeypatch):
    from medue.cli import main

    monkeypatch.setenv("MEDUE_KEY", (tmp_path / "site.key").read_text())
    cfg_path = tiny_config()
    assert main(["run", str(cfg_path), "--quiet"]) == 0
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "exported 2" in text and "efficacy: not measured" in text and "{" not in text.splitlines()[0]
    assert main(["report", str(out), "--json"]) == 0 and '"schema": "medue.report/1"' in capsys.readouterr().out
    report = json.loads((out / "release" / "report.json").read_text())
    report["summary"]["gate_failed"] = 1
    (out / "release" / "report.json").write_text(json.dumps(report))
    assert main(["report", str(out)]) == 3  # the run's gate failure is the report's exit code
    assert main(["restore", str(tmp_path / "gone.nii"), str(tmp_path / "missing.npz"), str(tmp_path / "x.nii")]) == 2
    err = capsys.readouterr().err
    assert "protected item" in err and "delta file" in err and "Traceback" not in err
    nifti = next(json.loads(p.read_text()) for p in (out / "markers").glob("*.json")
                 if json.loads(p.read_text()).get("format") == "nifti")
    dicom = next(json.loads(p.read_text()) for p in (out / "markers").glob("*.json")
                 if json.loads(p.read_text()).get("format") == "dicom")
    series = (out / "release" / dicom["outputs"][0]["path"]).parent
    assert main(["restore", str(series), str(out / nifti["delta"]["path"]), str(tmp_path / "wrong")]) == 1
    assert "does not belong" in capsys.readouterr().err  # another item's delta: refused, nothing written
    assert not (tmp_path / "wrong").exists()


def test_restore_of_a_metaimage_and_a_forged_delta_refused(tiny_config, tmp_path, capsys, monkeypatch):
    """MHA restores bit-exactly; a delta edited to restore other values (its fingerprints recomputed) is refused
    with the site's key; without a key restore asks for it or for --unauthenticated."""
    import io
    import zipfile

    import numpy as np
    import SimpleITK as sitk

    from medue.provenance import fingerprint_array

    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(0, 200, (3, 20, 20)).astype(np.int16))
    sitk.WriteImage(image, str(tmp_path / "in" / "ct.mha"))
    assert main(["run", str(tiny_config()), "--quiet"]) == 0
    out = tmp_path / "out"
    marker = next(json.loads(p.read_text()) for p in (out / "markers").glob("*.json")
                  if json.loads(p.read_text()).get("format") == "itk")
    protected, delta = out / "release" / marker["outputs"][0]["path"], out / marker["delta"]["path"]
    capsys.readouterr()
    monkeypatch.delenv("MEDUE_KEY", raising=False)
    assert main(["restore", str(protected), str(delta), str(tmp_path / "r.mha")]) == 2
    assert "no key to authenticate the delta" in capsys.readouterr().err and not (tmp_path / "r.mha").exists()
    key_file = tmp_path / "site.key"
    assert main(["restore", str(protected), str(delta), str(tmp_path / "r.mha"), "--key-file", str(key_file)]) == 0
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "r.mha")))
    assert (back == sitk.GetArrayFromImage(image)).all()
    # a forger rewrites the delta so that "restoring" gives other values, and recomputes both fingerprints
    with np.load(delta) as data:
        members = {name: data[name] for name in data.files}
    prot = sitk.GetArrayFromImage(sitk.ReadImage(str(protected)))
    forged_original = prot.copy()
    forged_original[0, :5, :5] = 0
    members["delta"] = (prot.astype(np.int32) - forged_original).astype(np.int16)
    members["original_fingerprint"] = np.asarray(fingerprint_array(forged_original))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, value in members.items():
            with zf.open(f"{name}.npy", "w") as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)
    (tmp_path / "forged.npz").write_bytes(buf.getvalue())
    capsys.readouterr()
    assert main(["restore", str(protected), str(tmp_path / "forged.npz"), str(tmp_path / "f.mha"),
                 "--key-file", str(key_file)]) == 2
    assert "not authentic" in capsys.readouterr().err and not (tmp_path / "f.mha").exists()
    # without the key the forger's delta passes its own fingerprints: that is what --unauthenticated says
    assert main(["restore", str(protected), str(tmp_path / "forged.npz"), str(tmp_path / "f.mha"),
                 "--unauthenticated"]) == 0
    assert "not authenticated" in capsys.readouterr().out


def test_run_dry_run_writes_nothing(tiny_config, tmp_path):
    from medue.cli import main

    assert main(["run", str(tiny_config()), "--dry-run"]) == 0
    assert not (tmp_path / "out").exists()
    assert main(["run", str(tiny_config()), "--dry-run", "--workers", "0"]) == 2  # overrides validated too


def test_log_lines_as_json_and_quiet(tiny_config, capsys):
    import json as _json

    assert main(["--log-json", "run", str(tiny_config()), "--no-tracking"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("{")]
    records = [_json.loads(ln) for ln in err]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any("fitting" in r["message"] for r in records)
    assert main(["run", str(tiny_config()), "--no-tracking", "--quiet", "--resume"]) == 0
    assert "fitting" not in capsys.readouterr().err


def test_etl_output_json_lines_item_fields_json_config_errors_and_a_json_summary(tiny_config, tmp_path, capsys):
    import json as _json

    (tmp_path / "in" / "broken.nii").write_bytes(b"not a nifti file")
    code = main(["--log-json", "run", str(tiny_config(tracking={"enabled": True})), "--summary-json"])
    out, err = capsys.readouterr()
    assert code == 4  # one item quarantined
    lines = [ln for ln in err.splitlines() if ln.strip()]
    records = [_json.loads(ln) for ln in lines]  # every line JSON, MLflow's own lines included
    item = [r for r in records if r.get("item_id")]
    assert item and item[0]["status"] == "quarantined" and item[0]["reason"]
    summary = _json.loads(out.strip().splitlines()[-1])
    assert summary["exit_code"] == 4 and summary["counts"]["done"] == 2 and summary["counts"]["quarantined"] == 1
    # what an ETL job acts on: how many released items carry the protection, weakened or unchanged on purpose
    assert set(summary["protection"]) == {"protected", "weakened_by_gate", "unchanged_on_purpose"}
    assert sum(summary["protection"].values()) == summary["counts"]["done"]
    assert main(["--log-json", "run", str(tmp_path / "missing.yaml")]) == 2
    problem = _json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert problem["event"] == "invalid_config" and problem["problems"]


def test_shell_completion_completes_commands_and_options(capsys, tmp_path):
    import shutil
    import subprocess

    assert main(["completion", "bash"]) == 0
    script = tmp_path / "medue.bash"
    script.write_text(capsys.readouterr().out)
    if shutil.which("bash") is None:
        pytest.skip("bash not installed")
    probe = ('source "$1"; COMP_WORDS=(medue ev); COMP_CWORD=1; _medue; echo "${COMPREPLY[@]}"; '
             'COMP_WORDS=(medue evaluate --qu); COMP_CWORD=2; _medue; echo "${COMPREPLY[@]}"')
    out = subprocess.run(["bash", "-c", probe, "_", str(script)], capture_output=True, text=True).stdout.split("\n")
    assert out[0] == "evaluate" and out[1] == "--quick"


def test_progress_in_a_log_is_whole_lines(tiny_config, capsys):
    """Captured output (a log file, a scheduler) gets progress lines, not a redrawn bar's carriage returns."""
    assert main(["run", str(tiny_config())]) == EXIT_OK
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "protect: 2/2 (100%)" in err and "[done 2]" in err


@pytest.mark.parametrize("fault, words", [
    (RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file data/1: "
                  "file write failed"), "the disk is full"),
    ("sqlite_full", "the disk is full"),
    ("mlflow", "the MLflow tracking store failed"),
])
def test_faults_in_library_words_are_one_line_and_an_exit_code(tiny_config, monkeypatch, capsys, fault, words):
    import medue.pipeline.runner as runner

    if fault == "sqlite_full":
        sqlalchemy = pytest.importorskip("sqlalchemy")
        fault = sqlalchemy.exc.OperationalError("INSERT INTO runs", {}, Exception("database or disk is full"))
    elif fault == "mlflow":
        mlflow = pytest.importorskip("mlflow")
        fault = mlflow.exceptions.MlflowException("(sqlite3.OperationalError) duplicate column name: storage_location")

    def boom(*args, **kwargs):
        raise fault

    monkeypatch.setattr(runner, "fit_protector", boom)
    assert main(["run", str(tiny_config()), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_every_failure_is_one_line_json_under_log_json_and_summary_json_always_prints(tmp_path, capsys):
    from medue.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\ninput: nowhere\noutput: out\nprotect: {method: nope}\n")
    assert main(["run", str(bad), "--summary-json"]) == 2
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["exit_code"] == 2 and summary["error"] == "invalid_config" and summary["problems"]
    (tmp_path / "delta.npz").write_bytes(b"not a zip")
    (tmp_path / "p.nii.gz").write_bytes(b"x")
    assert main(["--log-json", "restore", str(tmp_path / "p.nii.gz"), str(tmp_path / "delta.npz"),
                 str(tmp_path / "o.nii.gz")]) in (1, 2)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "event" in json.loads(lines[0])


def test_check_reads_every_input_as_run_does_and_says_what_would_be_quarantined(tmp_path, monkeypatch, capsys):
    import nibabel as nib
    import numpy as np

    from medue.cli import main
    from medue.testing import make_nifti

    for c in ("a", "b"):
        make_nifti(tmp_path / "in" / c / "v.nii", shape=(16, 16, 3), seed=0)
    hu = np.arange(-1024, 1024, 16, dtype=np.float32).reshape(8, 8, 2)  # float HU: quarantined without a unit
    nib.save(nib.Nifti1Image(np.tile(hu, (2, 2, 2)), np.eye(4)), tmp_path / "in" / "b" / "ct.nii")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("version: 1\nname: c\ninput: in\noutput: out\nlabels: {source: folder}\n"
                   "tracking: {enabled: false}\n")
    monkeypatch.setenv("MEDUE_KEY", "a-site-secret-of-enough-length")
    capsys.readouterr()
    assert main(["check", str(cfg)]) == 4
    out = capsys.readouterr().out
    assert "1 of 3 item(s) would be quarantined" in out
    assert "WOULD BE QUARANTINED" in out
    assert main(["inspect", str(tmp_path / "in"), "--config", str(cfg)]) == 4
    cfg.write_text(cfg.read_text() + "protect: {unit: 1.0}\n")  # with the unit the float image is read, as run reads it
    assert main(["check", str(cfg)]) == 0
    assert main(["inspect", str(tmp_path / "in"), "--config", str(cfg)]) == 0
    assert not (tmp_path / "out").exists()  # check and inspect write nothing


def test_logs_carry_no_input_path_and_no_class_name_unless_verbose(tiny_config, tmp_path, capsys):
    """What an ETL job ships to a log collector: counts, not the site's folder or its class names."""
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nseries_a,glioma_ward7\nvol.nii.gz,normal_ward7\n")
    cfg = tiny_config(labels={"source": "table", "table": str(labels)})
    capsys.readouterr()
    assert main(["--log-json", "run", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert "found 2 item(s) in the input folder" in err and "2 classes" in err
    assert str(tmp_path / "in") not in err and "ward7" not in err
    assert main(["--log-json", "-v", "run", str(cfg), "--resume"]) == 0
    err = capsys.readouterr().err
    assert str(tmp_path / "in") in err and "ward7" in err  # asked for with --verbose


def test_report_and_restore_errors_are_one_json_line_under_log_json(tmp_path, capsys):
    for argv in (["--log-json", "report", str(tmp_path / "nothing")],
                 ["--log-json", "restore", str(tmp_path / "p.nii"), str(tmp_path / "d.npz"), str(tmp_path / "o.nii")]):
        capsys.readouterr()
        assert main(argv) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and json.loads(lines[0])["event"] == "invalid_config"
