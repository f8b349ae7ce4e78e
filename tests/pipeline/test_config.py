import pytest
import yaml

from medue.errors import InvalidConfigError
from medue.pipeline.config import load_config, parse_config


def test_all_problems_reported_at_once(tmp_path):
    bad = {
        "name": "x", "input": "in", "output": "out", "colour": "blue",
        "deidentification": "maybe",
        "protect": {"method": "slam", "typo": 1},
        "fidelity": {"min_ssim": 3, "max_fraction_changed": -0.1, "max_diagnostic_accuracy_drop": 1.5, "min_psnr_db": "high", "override_reason": "r"},
        "execution": {"workers": 0, "backend": "spark", "device": "tpu"},
    }
    with pytest.raises(InvalidConfigError) as info:
        parse_config(bad)
    problems = "\n".join(info.value.problems)
    for needle in ["unknown key 'colour'", "deidentification: expected 'refuse', 'warn' or 'ignore'",
                   "did you mean 'salm'", "unknown key 'typo' in protect", "min_ssim: must be in [-1, 1]",
                   "max_fraction_changed: must be in [0, 1]", "max_diagnostic_accuracy_drop: must be in [0, 1]", "min_psnr_db: expected a number",
                   "override needs both", "workers: must be >= 1", "backend: expected 'local' or 'ray'",
                   "device: expected 'auto'"]:
        assert needle in problems, needle
    assert len(info.value.problems) >= 11


def test_protector_params_validated_by_constructor():
    with pytest.raises(InvalidConfigError, match=r"protect.params.mask_ratio: mask_ratio must be in \(0, 1\]"):
        parse_config({"name": "x", "input": "i", "output": "o", "protect": {"method": "salm", "params": {"mask_ratio": 2}}})
    with pytest.raises(InvalidConfigError, match="unknown parameter 'colour' for 'lines'; allowed: augment"):
        parse_config({"name": "x", "input": "i", "output": "o", "protect": {"params": {"colour": 1}}})


def test_missing_required_and_file_errors(tmp_path):
    with pytest.raises(InvalidConfigError, match="name: required"):
        parse_config({"input": "i", "output": "o"})
    with pytest.raises(InvalidConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(InvalidConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_key_sources(tmp_path, monkeypatch):
    cfg = parse_config({"name": "x", "input": "i", "output": "o", "key": {"env": "MEDUE_T_KEY", "file": None},
                        "labels": {"source": "folder"}})
    monkeypatch.delenv("MEDUE_T_KEY", raising=False)
    with pytest.raises(InvalidConfigError, match="no protection key: set the environment variable MEDUE_T_KEY"):
        cfg.read_key()
    monkeypatch.setenv("MEDUE_T_KEY", "s3cret-but-long-enough-0123")
    assert cfg.read_key() == "s3cret-but-long-enough-0123"
    for weak, why in (("k", "1 characters"), ("   abc   ", "3 characters"), ("aaaaaaaaaaaaaaaaaaaa", "distinct")):
        monkeypatch.setenv("MEDUE_T_KEY", weak)
        with pytest.raises(InvalidConfigError, match=why) as err:
            cfg.read_key()
        assert "secrets.token_urlsafe" in str(err.value) and weak.strip() not in str(err.value).split(";")[0][-5:]


def test_key_fingerprint_is_slow_to_brute_force():
    import time

    from medue.provenance import key_fingerprint

    t0 = time.perf_counter()
    fp = key_fingerprint("a-fresh-key-not-cached-0123456789")
    assert len(fp) == 16 and time.perf_counter() - t0 > 0.02  # thousands of guesses take minutes, not seconds


def test_every_problem_is_listed_at_once_with_strict_types():
    with pytest.raises(InvalidConfigError) as err:
        parse_config({"name": "x", "input": "i", "output": "o",
                      "protect": {"reversible": "false", "params": {"epsilonn": 3, "mask_ratio": "x"}},
                      "fidelity": {"min_psnr_db": float("nan"), "data_range": "image"},
                      "report": {"max_items_pictured": "many"}, "key": {"env": 123},
                      "labels": {"source": "table"}, "execution": {"workers": -2}})
    text = str(err.value)
    for expected in ("protect.reversible: expected true or false", "unknown parameter 'epsilonn'",
                     "did you mean 'epsilon'", "protect.params.mask_ratio: expected a number", "NaN",
                     "fidelity.data_range", "report.max_items_pictured", "key.env", "labels.table: required",
                     "execution.workers: must be >= 1"):
        assert expected in text
    with pytest.raises(InvalidConfigError) as err:
        parse_config({"name": "x", "input": "i", "output": "o",
                      "protect": {"params": {"epsilon": -3, "mask_ratio": 3.0}}})
    assert "protect.params.epsilon" in str(err.value) and "protect.params.mask_ratio" in str(err.value)


def test_shipped_pipelines_are_valid():
    from pathlib import Path

    for path in sorted(Path("pipelines").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.name and yaml.safe_load(path.read_text())["version"] == 1


def test_config_schema_accepts_the_shipped_pipelines_and_rejects_mistakes(capsys):
    import jsonschema
    import yaml as _yaml

    from medue.cli import main

    assert main(["config-schema"]) == 0
    schema = __import__("json").loads(capsys.readouterr().out)
    for path in ("pipelines/default.yaml", "pipelines/br35h.yaml"):
        jsonschema.validate(_yaml.safe_load(open(path)), schema)
    bad = _yaml.safe_load(open("pipelines/default.yaml"))
    bad["fidelty"] = {}  # misspelt section
    bad["protect"]["params"]["mask_ratoi"] = 0.3  # misspelt parameter
    bad["execution"]["workers"] = "two"
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(bad))
    assert len(errors) >= 3


def test_relative_paths_in_a_config_file_are_taken_from_its_folder(tmp_path, monkeypatch):
    from medue.pipeline.config import load_config

    folder = tmp_path / "site" / "configs"
    folder.mkdir(parents=True)
    (folder / "labels.csv").write_text("path,label\n")
    (folder / "job.yaml").write_text("version: 1\nname: rel\ninput: ../data\noutput: ../out\n"
                                     "labels: {source: table, table: labels.csv}\nkey: {file: site.key}\n")
    monkeypatch.chdir(tmp_path)  # anywhere else
    cfg = load_config(folder / "job.yaml")
    assert cfg.input_path.resolve() == (tmp_path / "site" / "data").resolve()
    assert cfg.output_path.resolve() == (tmp_path / "site" / "out").resolve()
    assert cfg.resolve(cfg.labels.table) == folder / "labels.csv"
    assert cfg.resolve(cfg.key.file) == folder / "site.key"
    # values given on the command line are the user's: the CLI makes them absolute from the current folder
    over = load_config(folder / "job.yaml", overrides={"input": str(tmp_path / "elsewhere")})
    assert over.input_path == tmp_path / "elsewhere"


def test_memory_budget_from_the_config_or_the_machine():
    from medue.device import memory_budget

    assert parse_config({"name": "x", "input": "i", "output": "o", "labels": {"source": "folder"},
                         "execution": {"memory_gb": 2.5}}).execution.memory_gb == 2.5
    with pytest.raises(InvalidConfigError, match="execution.memory_gb: must be > 0"):
        parse_config({"name": "x", "input": "i", "output": "o", "execution": {"memory_gb": 0}})
    assert memory_budget("cpu", memory_gb=2, workers=2) == 2**30  # shared by the workers
    machine = memory_budget("cpu")
    assert 2**26 <= machine <= 2**30 and memory_budget("cpu", workers=4) <= machine


def test_a_class_wise_method_without_labels_is_refused_with_the_fix():
    from medue.errors import InvalidConfigError
    from medue.pipeline.config import parse_config

    for method in ("lines", "fields"):
        with pytest.raises(InvalidConfigError) as info:
            parse_config({"name": "s", "input": "in", "output": "out", "protect": {"method": method}})
        assert f"protect.method {method!r} is class-wise and needs labels" in str(info.value)
        assert "medue init FOLDER" in str(info.value) and "label-agnostic method (uc)" in str(info.value)
    parse_config({"name": "s", "input": "in", "output": "out", "protect": {"method": "uc"}})  # label-agnostic
