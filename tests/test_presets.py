"""Named presets: each fixes a method, its parameters and the budget it was measured at, and its measurement is
that release's evidence when the release is like the one measured."""

import pytest

from medue.errors import InvalidConfigError
from medue.evidence import ReleaseFacts, evidence_applies
from medue.pipeline.config import parse_config
from medue.presets import PRESETS
from medue.protect import build_protector
from medue.records import EfficacyResult

BASE = {"name": "site", "input": "in", "output": "out", "labels": {"source": "folder"}}
BR35H = ReleaseFacts(("OT",), ((64, 64),), ("no_tumor", "tumor"))


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_carries_the_measurement_of_exactly_its_setting(name):
    preset = PRESETS[name]
    result = EfficacyResult.read(preset.evidence_path)
    params = build_protector(preset.method, **preset.params).params()
    assert evidence_applies(result, preset.method, params, BR35H) == (True, "")
    assert result.extra["config"]["fidelity"]["min_psnr_db"] == preset.fidelity["min_psnr_db"]
    assert result.extra["config"]["fidelity"]["max_abs_units"] == preset.fidelity["max_abs_units"]
    other = PRESETS["lines-36db" if name != "lines-36db" else "lines-34db"]
    ok, _ = evidence_applies(result, other.method, build_protector(other.method, **other.params).params(), BR35H)
    assert not ok  # another budget is not this measurement


def test_a_preset_sets_method_params_budget_and_evidence():
    cfg = parse_config({**BASE, "protect": {"preset": "lines-34db"}})
    assert (cfg.protect.method, cfg.protect.params) == ("lines", {"epsilon": 16})
    assert (cfg.fidelity.min_psnr_db, cfg.fidelity.max_abs_units) == (34, 16)
    assert cfg.load_efficacy_results().params["epsilon"] == 16
    same = parse_config({**BASE, "protect": {"preset": "lines-34db"}, "fidelity": {"min_psnr_db": 34}})
    assert same.config_hash() == cfg.config_hash()  # restating the preset's value is no conflict
    assert parse_config(BASE).config_hash() != cfg.config_hash()


def test_preset_conflicts_are_listed_at_once_and_unknown_names_get_a_suggestion():
    with pytest.raises(InvalidConfigError) as info:
        parse_config({**BASE, "protect": {"preset": "lines-36db", "method": "salm", "params": {"epsilon": 4}},
                      "fidelity": {"min_psnr_db": 40}})
    text = str(info.value)
    assert "protect.method: 'salm' conflicts" in text and "protect.params: a preset fixes" in text
    assert "fidelity.min_psnr_db: 40 conflicts with protect.preset 'lines-36db', measured at 36" in text
    with pytest.raises(InvalidConfigError, match="did you mean 'lines-38db'"):
        parse_config({**BASE, "protect": {"preset": "lines-38"}})


@pytest.mark.parametrize("value", [["lines-38db"], {"name": "lines-38db"}, 38])
def test_a_preset_that_is_not_a_name_is_a_config_error_not_a_traceback(value):
    with pytest.raises(InvalidConfigError, match="protect.preset: expected a string"):
        parse_config({**BASE, "protect": {"preset": value}})


def test_a_limit_stricter_than_the_preset_was_measured_with_is_listed():
    """`preset: lines-36db` under a gate with max_abs_physical 10 (as `medue init` writes) or a smaller changed
    fraction would weaken its items back towards the 38 dB pixels: refused, each limit named; a limit no stricter
    than the measured release's is fine."""
    with pytest.raises(InvalidConfigError) as info:
        parse_config({**BASE, "protect": {"preset": "lines-36db"},
                      "fidelity": {"max_abs_physical": 10, "max_fraction_changed": 0.1}})
    text = str(info.value)
    assert "fidelity.max_abs_physical: 10 is stricter than protect.preset 'lines-36db' was measured with (no limit)" \
        in text and "fidelity.max_fraction_changed: 0.1" in text and "(0.2)" in text
    parse_config({**BASE, "protect": {"preset": "lines-36db"}, "fidelity": {"max_fraction_changed": 0.2}})
