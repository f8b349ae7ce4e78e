import json

import jsonschema
import pytest

from medue.audit.report import load_schema, validate_report
from medue.pipeline.config import load_config
from medue.pipeline.runner import run_pipeline


def test_report_json_follows_schema_and_html_is_self_contained(tiny_config):
    cfg = load_config(tiny_config())
    summary = run_pipeline(cfg)
    report = json.loads(summary.report_json.read_text())
    validate_report(report)
    assert report["schema"] == "medue.report/1" and report["summary"]["done"] == 2
    assert len(report["key_fingerprint"]) == 16
    html = summary.report_html.read_text()
    assert html.count("data:image/png;base64,") >= 3  # fidelity plot + one panel per volume
    assert "src='http" not in html and "test-key-123-long-enough" not in html
    assert "What the protection looks like:</b> faint speckle" in html  # the method's pattern in words
    assert "DICOM attributes" in html and "Basic Application Level Confidentiality Profile" in html
    assert "lowest PSNR, dB" in html and "{&#34;min_psnr_db" not in html  # the gate in words, not raw JSON
    for heading in ("Clinical utility", "Before / after", "Efficacy: what the protection was measured to do", "Conformance", "Limitations"):
        assert heading in html
    broken = dict(report, schema="medue.report/0")
    with pytest.raises(jsonschema.ValidationError):
        validate_report(broken)
    assert load_schema()["$id"].endswith("/report/1")


def test_mlflow_run_has_params_metrics_artifacts_and_no_phi(tiny_config, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    from medue.protect import build_protector
    from medue.testing import make_release_efficacy

    efficacy = tmp_path / "efficacy.json"
    params = build_protector("salm-samplewise", epsilon=4, mask_ratio=0.1, max_rounds=1, inner_steps=2, train_steps=2,
                             surrogate="small").params()  # as fitted: `surrogate: auto` resolved at 16 px
    efficacy.write_text(json.dumps(make_release_efficacy("salm-samplewise", params, drop=0.01, protected=0.55, modality="CT",
                                                         image_size=(24, 24), classes=())))
    # the 24 px CT series alone: the data the result describes, so that it is this release's evidence
    cfg = load_config(tiny_config(input=str(tmp_path / "in" / "series_a"),
                                  tracking={"enabled": True, "uri": uri, "experiment": "medue-test"},
                                  report={"enabled": True, "efficacy_results": str(efficacy)}))
    summary = run_pipeline(cfg)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run = client.get_run(summary.mlflow_run_id)
    assert run.data.params["protect.method"] == "salm-samplewise" and run.data.params["protect.params.epsilon"] == "4"
    assert run.data.metrics["count_done"] == 1 and run.data.metrics["max_abs_units"] <= 4
    assert sum(run.data.metrics[f"protection_{k}"] for k in ("protected", "weakened_by_gate",
                                                               "unchanged_on_purpose")) == 1  # the protection state
    assert run.data.metrics["efficacy.resnet18_flip_crop.protected_max"] == 0.55
    assert run.data.tags["medue.efficacy.applies"] == "yes" and "synthetic-set" in run.data.tags["medue.efficacy.evidence"]
    assert run.data.metrics["diagnostic_accuracy_drop"] == 0.01 and run.data.tags["medue.check.diagnostic"] == "pass"
    assert run.data.tags["medue.key_fingerprint"] == json.loads(summary.report_json.read_text())["key_fingerprint"]
    blob = json.dumps([run.data.params, run.data.tags])
    assert "test-key-123-long-enough" not in blob and str(cfg.input_path) not in blob and "series_a" not in blob
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"manifest.json", "items.jsonl", "config.resolved.json", "report", "figures"} <= names
    figures = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
    assert figures and all(f.endswith(".png") for f in figures)  # shown as images in the MLflow UI
    assert len(run.inputs.dataset_inputs) == 1
    assert run.data.tags["mlflow.source.name"] == "medue run" and run.data.tags["mlflow.user"]
    assert "1 of 1 item(s) exported (" in run.data.tags["mlflow.note.content"]  # the run's description
    assert "protected in full" in run.data.tags["mlflow.note.content"]


def test_mlflow_embedded_default_store(tiny_config):
    pytest.importorskip("mlflow")
    cfg = load_config(tiny_config(tracking={"enabled": True}))
    summary = run_pipeline(cfg)
    assert summary.tracking_uri.startswith("sqlite:///") and (cfg.output_path / "mlflow" / "mlflow.db").exists()


def test_mlflow_store_half_made_by_an_interrupted_run_does_not_break_the_next(tiny_config):
    pytest.importorskip("mlflow")
    import sqlite3

    cfg = load_config(tiny_config(tracking={"enabled": True}))
    half = cfg.output_path / "mlflow" / "mlflow.partial-deadbeef.db"  # what a kill -9 during creation leaves
    half.parent.mkdir(parents=True)
    sqlite3.connect(half).execute("create table experiments (x int)").connection.commit()
    summary = run_pipeline(cfg)
    assert summary.mlflow_run_id and not half.exists()
    assert run_pipeline(cfg).mlflow_run_id  # and the store it made opens again


def test_mlflow_run_opens_at_start_and_a_failed_release_is_recorded_failed(tiny_config, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    import medue.pipeline.runner as runner

    cfg = load_config(tiny_config(tracking={"enabled": True}))
    summary = run_pipeline(cfg)
    client = mlflow.tracking.MlflowClient(tracking_uri=summary.tracking_uri)
    run = client.get_run(summary.mlflow_run_id)
    assert run.info.status == "FINISHED"
    # the run spans the release: it was opened before the fit, not after the report
    assert (run.info.end_time - run.info.start_time) / 1000 >= 0.8 * summary.seconds

    def boom(*args, **kwargs):
        raise RuntimeError("disk went away")

    monkeypatch.setattr(runner, "fit_protector", boom)
    with pytest.raises(RuntimeError):
        run_pipeline(cfg)  # the same release again, dying in its fit
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]


def test_a_killed_release_s_run_is_closed_killed_and_linked_by_the_resume(tiny_config):
    mlflow = pytest.importorskip("mlflow")
    from medue.audit.sinks import open_sink
    from medue.layout import OutputLayout

    cfg = load_config(tiny_config(tracking={"enabled": True}))
    layout = OutputLayout(cfg.output_path)
    layout.root.mkdir(parents=True)
    killed = open_sink(cfg.record(), layout)
    dead_run = killed.start(cfg.record(), "0123456789abcdef")  # a release whose process was killed -9 here: never closed
    summary = run_pipeline(cfg, resume=True)
    client = mlflow.tracking.MlflowClient(tracking_uri=summary.tracking_uri)
    assert client.get_run(dead_run).info.status == "KILLED"
    run = client.get_run(summary.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["medue.resumed_from_run"] == dead_run
    statuses = sorted(r.info.status for r in client.search_runs(
        [client.get_experiment_by_name(cfg.tracking.experiment).experiment_id]))
    assert statuses == ["FINISHED", "KILLED"]  # nothing stays RUNNING


def test_report_zooms_into_the_most_changed_region_of_large_images():
    import numpy as np

    from medue.audit.report import _most_changed_window

    diff = np.zeros((300, 400), np.int64)
    diff[200:210, 330:336] = 8  # a small patch of 1-px-scale change, invisible when a 400 px image is shrunk
    y0, x0, n = _most_changed_window(diff, 64)
    assert n == 64 and y0 <= 200 and y0 + n >= 210 and x0 <= 330 and x0 + n >= 336
    assert _most_changed_window(np.ones((20, 30), np.int64), 64)[2] == 20  # never larger than the image


def test_report_states_the_policies_in_force_and_every_warning(tiny_config, tmp_path, capsys):
    from medue.cli import main
    from medue.testing import make_dicom_series

    path = tiny_config(deidentification="warn")
    cfg = load_config(path)
    make_dicom_series(cfg.input_path / "identified", slices=2, size=24, seed=5, deidentified=False)
    summary = run_pipeline(cfg)
    report = json.loads(summary.report_json.read_text())
    validate_report(report)
    assert report["policies"]["deidentification"] == "warn" and report["policies"]["reversible"] is True
    assert len(report["warnings"]) == 1 and "de-identification" in report["warnings"][0]["warning"]
    html = summary.report_html.read_text()
    assert "Policies and warnings" in html and "1 warning(s)" in html and "released with a warning" in html
    main(["report", str(cfg.output_path)])
    out = capsys.readouterr().out
    assert "policies: de-identification warn" in out and out.count("  warning: ") == 1


def test_two_releases_creating_one_new_sqlite_store_at_once_both_finish(tiny_config, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    configs = []
    for k in range(2):
        path = tiny_config(output=str(tmp_path / f"out{k}"), name=f"release-{k}",
                           tracking={"enabled": True, "uri": uri, "experiment": "shared"})
        configs.append(path.with_name(f"release{k}.yaml"))
        configs[-1].write_text(path.read_text())
    procs = [subprocess.Popen([sys.executable, "-m", "medue.cli", "run", str(c), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for c in configs]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id])
    assert sorted(r.data.tags["medue.release"] for r in runs) == ["release-0", "release-1"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_an_experiment_created_by_another_release_meanwhile_is_used_not_a_failure(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from medue.audit.sinks import MlflowSink, _create_store_atomically

    db = tmp_path / "mlflow.db"
    _create_store_atomically(db)
    uri = f"sqlite:///{db}"
    other = mlflow.tracking.MlflowClient(tracking_uri=uri).create_experiment("shared")  # the other release won
    real = mlflow.tracking.MlflowClient.get_experiment_by_name
    calls = []

    def stale_first(self, name):  # our lookup ran just before the other release's create
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(mlflow.tracking.MlflowClient, "get_experiment_by_name", stale_first)
    sink = MlflowSink(uri, "shared", tmp_path / "artifacts")
    assert sink._experiment_id() == other and len(calls) == 2


def test_the_price_of_strength_of_a_method_comes_from_its_presets_and_marks_the_release_s_own():
    from medue.audit.report import _acc, _tradeoff
    from medue.presets import PRESETS

    chart, rows = _tradeoff("lines", "lines-36db")
    assert chart.startswith("data:image/png;base64,")
    header, *body = rows
    assert header[:3] == ["preset", "PSNR min dB / SSIM min", "max |delta| units"] and "plain_cnn" in header
    assert [r[0] for r in body] == ["lines-38db", "lines-36db (this release)", "lines-34db"]  # closest first
    fields = [p for p in PRESETS.values() if p.method == "fields"]
    assert len(fields) >= 2 and len(_tradeoff("fields", None)[1]) == len(fields) + 1
    assert _tradeoff("uc", None) == (None, [])  # no presets: no trade-off shown
    assert _acc(None) == "not run" and _acc(0.5) == "0.500"  # never "identical" for an accuracy nobody measured


def test_proving_use_quotes_the_measured_power_of_the_release_s_setting():
    import json as _json

    from medue.audit.report import _power_rows
    from medue.presets import PRESETS

    sentence, rows = _power_rows("fields", "fields-32db-keyed")
    power = _json.loads(PRESETS["fields-32db-keyed"].power_path.read_text())["rows"]
    pos = [r for r in power if r["saw_release"]]
    neg = [r for r in power if not r["saw_release"]]
    assert sentence.startswith("Measured on fields-32db-keyed")
    assert f"detected {sum(r['detected'] for r in pos)} of {len(pos)} models trained on the release" in sentence
    never = [r for r in rows if r[0].startswith("never saw the release")]
    assert sum(int(r[1].split(" of ")[1]) for r in never) == len(neg)
    assert sum(int(r[1].split(" of ")[0]) for r in never) == sum(r["detected"] for r in neg)
    sentence, rows = _power_rows("lines", "lines-38db")  # the default: verified as a setting
    assert sentence.startswith("Measured on lines-38db") and "not that it was this site's release" in sentence
    assert ["never saw the release: trained on clean data (false positives)", "0 of 11"] in rows
    sentence, rows = _power_rows("salm", None)
    assert sentence.startswith("Not measured for this setting") and rows == []


def test_the_verdict_line_names_an_attack_the_release_does_not_stop():
    from medue.audit.report import verdict_headline
    from medue.evidence import verdict
    from medue.protect import build_protector
    from medue.records import EfficacyResult
    from medue.testing import make_release_efficacy

    params = build_protector("salm-samplewise", epsilon=8).params()
    data = make_release_efficacy("salm-samplewise", params, protected=0.7)
    mix = [{**r, "attack": "resnet18_mix10", "habit": "mixing", "clean_test_accuracy": 0.85} for r in data["rows"]]
    mix.append({**mix[-1], "training_data": "clean_part", "clean_test_accuracy": 0.9})  # the release adds -0.05
    result = EfficacyResult.from_dict({**data, "rows": data["rows"] + mix})
    line = verdict_headline(verdict(result, method="salm-samplewise", params=params), result)
    assert line.startswith("MEASURED on release files of this setting (synthetic-set): stops 1 of 2 everyday ways")
    assert "the worst, resnet18_flip_crop, reached 0.70" in line  # not the mixing row at 0.85, which is held
    assert verdict_headline(None, None).startswith("NOT MEASURED: no efficacy result is attached")


def test_a_tracking_server_that_does_not_answer_fails_fast_and_writes_nothing(tiny_config, tmp_path, capsys):
    import socket
    import time

    from medue.cli import main

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tiny_config(tracking={"enabled": True, "uri": f"http://127.0.0.1:{port}"})
    t = time.perf_counter()
    capsys.readouterr()
    assert main(["run", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - t < 30 and "does not answer" in err and "--no-tracking" in err
    assert not (tmp_path / "out").exists()
    assert main(["check", str(cfg)]) == 2 and "does not answer" in capsys.readouterr().err
    assert main(["run", str(cfg), "--quiet", "--no-tracking"]) == 0


def test_a_clinical_window_that_saturates_the_slice_falls_back_to_percentiles():
    import numpy as np

    from medue.audit.report import window_saturates

    phantom = np.full((32, 32), 1200.0)  # a CT phantom at 991-1489 HU: a soft-tissue window shows it all white
    phantom[8:24, 8:24] = 1000.0
    assert window_saturates(phantom, -160, 240)
    head = np.linspace(-100, 200, 32 * 32).reshape(32, 32)
    assert not window_saturates(head, -160, 240) and not window_saturates(np.zeros((4, 4)), -160, 240)


def test_the_fidelity_chart_of_a_large_release_is_a_distribution_not_hundreds_of_bars(monkeypatch):
    import matplotlib.axes

    from medue.audit import report
    from medue.records import ItemMarker

    bars, hists = [], []
    real_bar = matplotlib.axes.Axes.bar

    def bar(self, *a, **k):  # a labelled bar chart: item names on the x axis (hist draws bars of numbers)
        if isinstance(a[0], list) and a[0] and isinstance(a[0][0], str):
            bars.append(a)
        return real_bar(self, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", bar)
    real_hist = matplotlib.axes.Axes.hist
    monkeypatch.setattr(matplotlib.axes.Axes, "hist", lambda self, *a, **k: hists.append(a) or real_hist(self, *a, **k))
    items = [ItemMarker(item_id=f"{i:016x}", status="done",
                        fidelity={"psnr_db": 38 + i % 3, "ssim": 0.97, "per_slice_psnr_db": [38.0]})
             for i in range(600)]
    assert report._fidelity_plot(items).startswith("data:image/png")
    assert not bars and len(hists) == 3
    bars.clear()
    report._fidelity_plot(items[:5])
    assert len(bars) == 2


def test_the_report_names_the_limit_that_weakened_items():
    from medue.audit.report import protection_counts, protection_lines
    import numpy as np

    from medue.fidelity.checks import FidelityThresholds, check_fidelity
    from medue.records import ItemMarker

    original = np.zeros((1, 16, 16), dtype=np.int16)
    protected = original.copy()
    protected[0, :8] = 12  # 12 stored units at slope 1: over a physical limit of 10, and a low PSNR
    fid = check_fidelity(original, protected, FidelityThresholds(min_psnr_db=38, min_ssim=None, max_abs_physical=10),
                         data_range=255)
    assert fid.failed_limits == ["min_psnr_db", "max_abs_physical"] and len(fid.failures) == 2
    assert "failed_limits" not in fid.to_dict()  # the marker says it in words, as before
    full = {"protection": {"params": {"epsilon": 8}, "stats": {"linf_units": 8}}, "fidelity": {"passed": True}}
    markers = [ItemMarker(item_id="a", status="done", **full),
               ItemMarker(item_id="b", status="done", adapted={"kept_fraction": 0.5, "limits": ["max_abs_physical"]},
                          **full),
               ItemMarker(item_id="c", status="done", adapted={"kept_fraction": 0.7,
                                                               "limits": ["max_abs_physical", "min_psnr_db"]}, **full)]
    counts = protection_counts(markers)
    assert counts["weakened_by_limit"] == {"max_abs_physical": 2, "min_psnr_db": 1}
    assert "the limits the full protection missed: max_abs_physical (2), min_psnr_db (1)" in protection_lines(counts)[0]


def test_the_verdict_line_of_evidence_whose_attackers_did_not_fit_says_not_measured_and_what_to_do():
    from medue.audit.report import verdict_headline
    from medue.evidence import verdict
    from medue.protect import build_protector
    from medue.records import EfficacyResult
    from medue.testing import make_release_efficacy

    params = build_protector("lines").params()
    data = make_release_efficacy("lines", params, protected=0.5)
    for r in data["rows"]:
        r.update(train_accuracy=0.5, fit=False)  # a small self-evaluation whose attackers learned nothing
    result = EfficacyResult.from_dict(data)
    v = verdict(result, method="lines", params=params, facts=None, target=0.6)
    line = verdict_headline(v, result)
    assert line.startswith("NOT MEASURED: no everyday-habit attacker") and "--epochs" in line
    assert "stops" not in line and "identical" not in line
