import json

from medue.pipeline.runner import run_pipeline
from medue.records import MARKER_SCHEMA, ItemMarker


def test_item_marker_reads_back_every_marker_a_release_wrote_exactly(tiny_config):
    from medue.pipeline.config import load_config

    cfg = load_config(tiny_config())
    summary = run_pipeline(cfg)
    paths = sorted((cfg.output_path / "markers").glob("*.json"))
    assert paths and len(paths) == len(summary.markers)
    for path in paths:
        raw = json.loads(path.read_text())
        marker = ItemMarker.read(path)
        assert marker is not None and marker.to_dict() == raw and not marker.extra
        assert marker.exported == (raw["status"] == "done") and marker.schema == MARKER_SCHEMA
    assert all(isinstance(m, ItemMarker) for m in summary.markers)


def test_item_marker_keeps_unknown_fields_and_refuses_what_is_not_a_marker(tmp_path):
    data = {"item_id": "abc", "status": "quarantined", "reason": "truncated", "future_field": [1, 2]}
    marker = ItemMarker.from_dict(data)
    assert marker.to_dict() == data and marker.extra == {"future_field": [1, 2]}
    assert not marker.exported and not marker.weakened and not marker.protected_in_full
    bad = tmp_path / "half.json"
    bad.write_text('{"item_id": "abc", "sta')
    assert ItemMarker.read(bad) is None and ItemMarker.read(tmp_path / "missing.json") is None
    (tmp_path / "other.json").write_text('{"status": "done"}')
    assert ItemMarker.read(tmp_path / "other.json") is None
    (tmp_path / "list.json").write_text('["item_id"]')
    assert ItemMarker.read(tmp_path / "list.json") is None


def test_item_marker_status_properties():
    done = ItemMarker(item_id="a", status="done", protection={"params": {"epsilon": 8}, "stats": {"linf_units": 8}},
                      fidelity={"passed": True})
    assert done.protected_in_full and done.within_budget and done.gate_passed
    weak = ItemMarker(item_id="b", status="done", adapted={"kept_fraction": 0.5},
                      protection={"params": {"epsilon": 8}, "stats": {"linf_units": 9}}, fidelity={"passed": False})
    assert weak.weakened and not weak.protected_in_full and not weak.within_budget and not weak.gate_passed
    blank = ItemMarker(item_id="c", status="done", unchanged_on_purpose="blank class")
    assert not blank.protected_in_full and not blank.weakened
    assert ItemMarker(item_id="d", status="done", fidelity={"passed": False}, override={"reason": "x"}).gate_passed


def test_efficacy_result_reads_the_shipped_evidence_back_byte_for_byte():
    from pathlib import Path

    from medue.records import EfficacyResult, EfficacyRow

    path = Path(__file__).parents[1] / "pipelines" / "evidence" / "lines_br35h_64_suite.json"
    raw = json.loads(path.read_text())
    result = EfficacyResult.read(path)
    assert json.dumps(result.to_dict()) == json.dumps(raw)  # same keys, same order: report.json embeds it
    assert result.method == "lines" and result.rows and all(isinstance(r, EfficacyRow) for r in result.rows)
    old = EfficacyRow.from_dict({"architecture": "resnet18", "augmentation": "flip_crop", "countermeasure": "jpeg_q10",
                                 "training_data": "protected", "clean_test_accuracy": 0.9, "train_accuracy": 1.0,
                                 "fit": True})
    assert old.key == "resnet18_flip_crop_jpeg_q10" and old.attack is None and "attack" not in old.to_dict()


def test_the_fit_record_reads_and_writes_protector_json_byte_for_byte(tiny_config, tmp_path):
    from medue.layout import OutputLayout
    from medue.pipeline.config import load_config
    from medue.pipeline.runner import run_pipeline
    from medue.records import FitRecord

    cfg = load_config(tiny_config())
    run_pipeline(cfg)
    path = OutputLayout(cfg.output_path).fit_record
    record = FitRecord.read(path)
    assert record is not None and record.method == "salm-samplewise" and record.state_fingerprint
    record.write(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()
    newer = {**json.loads(path.read_text()), "written_by_a_later_version": 1}
    assert FitRecord.from_dict(newer).to_dict() == newer  # a newer writer's keys are kept
    (tmp_path / "half.json").write_text('{"method": "li')
    assert FitRecord.read(tmp_path / "half.json") is None and FitRecord.read(tmp_path / "none.json") is None
