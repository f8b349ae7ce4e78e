"""`medue init FOLDER`: a config and a labels table for a site's own folder, checked by `medue check`."""

import csv

import pytest

from medue.cli import main
from medue.errors import InvalidConfigError
from medue.pipeline.config import load_config
from medue.site_init import init_site
from medue.testing import make_nifti


def test_init_reads_classes_from_sub_folders_and_the_config_checks(tmp_path, monkeypatch, capsys):
    for c in ("glioma", "normal"):
        for k in range(2):
            make_nifti(tmp_path / "data" / c / f"v{k}.nii", shape=(16, 16, 3), seed=k)
    monkeypatch.chdir(tmp_path)
    assert main(["init", "data"]) == 0
    assert "classes from sub-folders: glioma, normal" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "data_labels.csv")))
    assert [(r["path"], r["label"]) for r in rows] == [("glioma/v0.nii", "glioma"), ("glioma/v1.nii", "glioma"),
                                                       ("normal/v0.nii", "normal"), ("normal/v1.nii", "normal")]
    monkeypatch.setenv("MEDUE_KEY", "a-site-secret-of-enough-length")
    cfg = load_config(tmp_path / "data.yaml")
    assert cfg.protect.method == "lines" and cfg.protect.params == {} and cfg.deidentification == "refuse"
    assert main(["check", "data.yaml"]) == 0
    assert "labels {'glioma': 2, 'normal': 2}" in capsys.readouterr().out
    assert main(["init", "data"]) == 2  # never overwrites without --force
    assert main(["init", "data", "--force"]) == 0


def test_a_flat_folder_gets_empty_labels_that_check_reports(tmp_path, monkeypatch, capsys):
    for k in range(3):
        make_nifti(tmp_path / "flat" / f"v{k}.nii", shape=(16, 16, 3), seed=k)
    done = init_site(tmp_path / "flat", config=tmp_path / "site.yaml")
    assert done.unlabelled == 3 and done.classes == ()
    monkeypatch.setenv("MEDUE_KEY", "a-site-secret-of-enough-length")
    assert main(["check", str(done.config)]) == 2
    assert "label" in capsys.readouterr().err.lower()


def test_init_of_a_folder_without_images_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidConfigError, match="finds no DICOM, NIfTI"):
        init_site(tmp_path / "empty", config=tmp_path / "x.yaml")


def test_the_readme_walk_through_for_your_own_data_runs(tmp_path):
    """The README's "Your own data" commands, as written, on a folder of one sub-folder per class."""
    import re
    import shutil
    import subprocess
    from pathlib import Path

    block = re.search(r"<!-- example: own-data -->\s*```bash\n(.*?)```",
                      (Path(__file__).resolve().parents[1] / "README.md").read_text(), flags=re.S)
    assert block, "README lost its own-data walk-through"
    for c in ("glioma", "normal"):
        for k in range(2):
            make_nifti(tmp_path / "brain_mri" / c / f"v{k}.nii", shape=(24, 20, 3), seed=k)
    script = block.group(1).replace("/data/brain_mri", str(tmp_path / "brain_mri"))
    if shutil.which("medue") is None:
        pytest.skip("the medue command is not installed (pip install -e .)")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "brain_mri" / "release" / "report.html").is_file()
    assert "exported items: " in done.stdout


@pytest.mark.parametrize("folder", ["CT #3", "a: b", "line\nbreak: injected", "quote's \"x\""])
def test_folder_names_are_quoted_so_the_config_names_that_folder(tmp_path, monkeypatch, folder):
    make_nifti(tmp_path / folder / "v0.nii", shape=(16, 16, 3), seed=0)
    done = init_site(tmp_path / folder, config=tmp_path / "site.yaml")
    monkeypatch.setenv("MEDUE_KEY", "a-site-secret-of-enough-length")
    cfg = load_config(done.config)
    assert cfg.input_path.resolve() == (tmp_path / folder).resolve()
    assert "injected" not in cfg.model_dump()  # a newline in a name adds no key


def test_config_and_labels_at_one_path_and_non_utf8_names_are_refused(tmp_path):
    make_nifti(tmp_path / "d" / "v0.nii", shape=(16, 16, 3), seed=0)
    with pytest.raises(InvalidConfigError, match="the same file"):
        init_site(tmp_path / "d", config=tmp_path / "x", labels=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    odd = tmp_path / "d" / b"caf\xe9".decode("utf-8", "surrogateescape")
    odd.mkdir()
    with pytest.raises(InvalidConfigError, match="not UTF-8"):
        init_site(odd, config=tmp_path / "y.yaml")


def test_an_item_whose_name_is_not_utf8_is_refused_in_one_line_and_nothing_is_written(tmp_path):
    """The folder's own name is UTF-8, an item's is not (Latin-1 from an old share): refused before any file."""
    odd = tmp_path / "d" / b"caf\xe9".decode("utf-8", "surrogateescape")
    make_nifti(odd / "v0.nii", shape=(16, 16, 3), seed=0)
    make_nifti(tmp_path / "d" / "fine" / "v1.nii", shape=(16, 16, 3), seed=1)
    with pytest.raises(InvalidConfigError, match=r"1 item\(s\) have names that are not UTF-8"):
        init_site(tmp_path / "d", config=tmp_path / "site.yaml")
    assert not (tmp_path / "site.yaml").exists() and not (tmp_path / "site_labels.csv").exists()
