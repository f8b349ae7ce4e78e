"""Whose evidence a result is: method, parameters and data (modality, image size, classes) must all match."""

from medue.evidence import NEVER_TESTED, TARGET, ReleaseFacts, evidence_applies, summarise, verdict
from medue.protect import build_protector
from medue.records import EfficacyResult
from medue.testing import make_release_efficacy

PARAMS = build_protector("salm-samplewise", epsilon=8).params()
BR35H = ReleaseFacts(modalities=("OT",), image_sizes=((16, 16),), classes=("a", "b"), config_hash="abc")


R = EfficacyResult.from_dict


def _result(**kw):
    return make_release_efficacy("salm-samplewise", PARAMS, **kw)


def test_a_result_applies_only_to_the_same_method_parameters_and_data():
    assert evidence_applies(R(_result()), "salm-samplewise", PARAMS, BR35H) == (True, "")
    assert evidence_applies(R(_result()), "salm-samplewise", PARAMS) == (True, "")  # no facts: method and parameters only
    cases = {
        "modality OT there, CT here": ReleaseFacts(("CT",), ((16, 16),), ("a", "b")),
        "image size 16x16 there, 64x64 here": ReleaseFacts(("OT",), ((64, 64),), ("a", "b")),
        "classes a, b there, normal, tumour here": ReleaseFacts(("OT",), ((16, 16),), ("normal", "tumour")),
        "classes a, b there, no labels here": ReleaseFacts(("OT",), ((16, 16),), ()),
    }
    for expected, facts in cases.items():
        ok, why = evidence_applies(R(_result()), "salm-samplewise", PARAMS, facts)
        assert not ok and why.startswith("evidence from synthetic-set, not measured on this release")
        assert expected in why, why
    ok, why = evidence_applies(R(_result()), "salm-samplewise", {**PARAMS, "epsilon": 4}, BR35H)
    assert not ok and "epsilon: 8 there, 4 here" in why
    # a mixed release (two sizes) is never matched by a single-size result
    ok, _ = evidence_applies(R(_result()), "salm-samplewise", PARAMS, ReleaseFacts(("OT",), ((16, 16), (32, 32)), ("a", "b")))
    assert not ok


def test_a_self_evaluation_applies_to_its_own_release_alone():
    own = {**_result(modality="CT", image_size=(99, 99)), "self_evaluation": True, "release_config_hash": "abc"}
    assert evidence_applies(R(own), "salm-samplewise", PARAMS, BR35H) == (True, "")
    ok, why = evidence_applies(R(own), "salm-samplewise", PARAMS, ReleaseFacts(("OT",), ((16, 16),), ("a", "b"), "other"))
    assert not ok and "another release" in why
    v = verdict(R(own), method="salm-samplewise", params=PARAMS, facts=BR35H)
    assert v["own"] and v["applies"]


def test_verdict_counts_the_worst_seed_against_the_target():
    result = _result(protected=0.55)
    result["rows"].append({**result["rows"][-1], "seed": 2, "clean_test_accuracy": 0.71})  # one seed escapes
    (s,) = summarise(R(result))
    assert (s["protected_min"], s["protected_max"], s["protected_runs"]) == (0.55, 0.71, 3)
    v = verdict(R(result), method="salm-samplewise", params=PARAMS, facts=BR35H)
    assert v["target"] == TARGET == 0.60 and v["protects_against"] == []
    assert v["does_not_protect_against"][0].startswith("resnet18_flip_crop: worst seed 0.710 (of 3 fitted runs")
    assert set(NEVER_TESTED) <= set(v["not_tested"])
    result["rows"][-1]["fit"] = False  # a model that did not fit: no proof of protection, but it learned 0.71
    v = verdict(R(result), method="salm-samplewise", params=PARAMS, facts=BR35H)
    assert v["protects_against"] == []
    assert v["does_not_protect_against"][0].startswith("resnet18_flip_crop: 0.710 by a model that did not fit")
    result["rows"][-1]["clean_test_accuracy"] = 0.52  # an unfit model at chance says nothing: the fitted runs decide
    v = verdict(R(result), method="salm-samplewise", params=PARAMS, facts=BR35H)
    assert v["protects_against"][0].startswith("resnet18_flip_crop: worst seed 0.550")
    for r in result["rows"]:
        r["fit"] = r["training_data"] == "clean"  # no protected run fitted, none above the target: not tested
    v = verdict(R(result), method="salm-samplewise", params=PARAMS, facts=BR35H)
    assert "resnet18_flip_crop (no run fitted its training set)" in v["not_tested"]


def test_borrowed_evidence_protects_against_nothing():
    v = verdict(R(_result()), method="salm-samplewise", params=PARAMS, facts=ReleaseFacts(("CT",), ((512, 512),), ("a", "b")))
    assert not v["applies"] and v["protects_against"] == [] and v["does_not_protect_against"] == []
    assert v["note"].startswith("evidence from synthetic-set") and v["not_tested"][0].startswith("resnet18_flip_crop")


def test_the_shipped_br35h_evidence_applies_to_the_shipped_br35h_pipeline():
    """The suite measured the line default with ``surrogate: small`` (what ``auto`` resolves to below 256 px; at 256
    px and more it resolves to ``strided``). A pattern placed without refinement never reads the surrogate, so the
    evidence is still this release's whatever the surrogate; a refined one is not."""
    from pathlib import Path

    from medue.pipeline.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "pipelines" / "br35h.yaml")
    result = cfg.load_efficacy_results()
    params = build_protector(cfg.protect.method, **cfg.protect.params).params()
    facts = ReleaseFacts(("OT",), ((64, 64),), ("no_tumor", "tumor"))
    assert result.params["surrogate"] == "small" and params["surrogate"] == "auto"
    assert evidence_applies(result, cfg.protect.method, params, facts) == (True, "")
    strided = {**params, "surrogate": "strided"}
    assert evidence_applies(result, cfg.protect.method, strided, facts) == (True, "")
    refined = build_protector(cfg.protect.method, **{**cfg.protect.params, "max_rounds": 2}).params()
    ok, why = evidence_applies(result, cfg.protect.method, refined, facts)
    assert not ok and "max_rounds: 0 there, 2 here" in why and "surrogate: 'small' there, 'auto' here" in why


def test_a_mixing_attack_is_judged_by_what_the_release_adds_to_its_clean_part():
    result = _result(protected=0.90)
    for r in result["rows"]:
        r["attack"] = "resnet18_mix10"
    result["rows"].append({**result["rows"][-1], "training_data": "clean_part", "clean_test_accuracy": 0.89,
                           "fit": False})  # the clean part alone need not fit: it is what those images teach
    (s,) = summarise(R(result))
    assert s["clean_part"] == 0.89 and s["unfit_runs"] == 0
    v = verdict(R(result), method="salm-samplewise", params=PARAMS, facts=BR35H)
    assert v["protects_against"][0].startswith("resnet18_mix10: worst seed 0.900 vs 0.890 from its clean images alone "
                                               "(the release adds +0.010)")
    result["rows"][-1]["clean_test_accuracy"] = 0.80  # the protected part taught it 0.10 more: not held
    v = verdict(R(result), method="salm-samplewise", params=PARAMS, facts=BR35H)
    assert v["protects_against"] == [] and "adds +0.100" in v["does_not_protect_against"][0]
