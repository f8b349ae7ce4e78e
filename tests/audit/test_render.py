"""Open the HTML report in headless Chromium: it must load with every picture decoded and no script error."""

import pytest

from medue.audit.render import find_chromium, render_report
from medue.pipeline.config import load_config
from medue.pipeline.runner import EXIT_OK, run_pipeline

pytest.importorskip("playwright", reason="pip install playwright (part of the test extra)")
pytestmark = pytest.mark.skipif(find_chromium() is None, reason="no Chromium on PATH (apt-get install chromium)")


def test_report_renders_with_all_images(tiny_config, tmp_path):
    cfg = load_config(tiny_config())
    assert run_pipeline(cfg).exit_code == EXIT_OK
    shot = tmp_path / "report.png"
    info = render_report(cfg.output_path / "release" / "report.html", screenshot=shot)
    assert info["ok"], info
    assert info["broken_images"] == [] and info["console_errors"] == []
    alts = [i["alt"] for i in info["images"]]
    assert "fidelity plots" in alts and sum(a.startswith("preview") for a in alts) == 2
    assert all(i["width"] > 100 and i["height"] > 100 for i in info["images"])
    assert {"Summary", "Clinical utility (fidelity)", "Conformance", "Limitations"} <= set(info["headings"])
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verdict_box_shows_borrowed_evidence_as_not_tested(tiny_config, tmp_path):
    import json

    from medue.protect import build_protector
    from medue.testing import make_release_efficacy

    params = build_protector("salm-samplewise", epsilon=4, mask_ratio=0.1, max_rounds=1, inner_steps=2, train_steps=2,
                             surrogate="small").params()
    result = tmp_path / "br35h.json"  # measured on other data (16 px, classes a/b) than this release
    result.write_text(json.dumps(make_release_efficacy("salm-samplewise", params, protected=0.5)))
    cfg = load_config(tiny_config(report={"enabled": True, "efficacy_results": str(result)}))
    assert run_pipeline(cfg).exit_code == EXIT_OK
    info = render_report(cfg.output_path / "release" / "report.html")
    assert info["ok"], info
    assert info["headings"][:4] == ["Protection report: test-release", "Summary", "What this release carries",
                                    "What the protection stops"]
    shown = info["verdict"]
    protects = shown[shown.index("H3: Protects against") + 1]
    assert protects == "LI: not measured here"  # borrowed evidence: nothing measured here, said so
    assert "LI: resnet18_flip_crop (measured on other data: 0.500)" in shown
    assert any(s.startswith("LI: fine-tuning a network pretrained") for s in shown)


def test_the_report_says_first_which_items_carry_no_pattern_by_class(tiny_config, tmp_path):
    import json

    (tmp_path / "labels.csv").write_text("path,label\nseries_a,a\nvol.nii.gz,b\n")
    cfg = load_config(tiny_config(labels={"source": "table", "table": str(tmp_path / "labels.csv"),
                                          "include_in_release": True},
                                  protect={"method": "lines", "params": {"epsilon": 4}, "reversible": True}))
    assert run_pipeline(cfg).exit_code == EXIT_OK
    report = json.loads((cfg.output_path / "release" / "report.json").read_text())
    p = report["protection"]
    assert (p["protected"], p["unchanged_on_purpose"]) == (1, 1)
    assert p["by_class"]["a"]["unchanged_on_purpose"] == 1 and p["by_class"]["b"]["protected"] == 1
    info = render_report(cfg.output_path / "release" / "report.html")
    assert info["ok"], info
    page = (cfg.output_path / "release" / "report.html").read_text()
    box = page[page.index("What this release carries"):page.index("What the protection stops")]
    assert "1 released UNCHANGED on purpose" in box and "class a: 0 protected" in box
    assert info["headings"].index("What this release carries") == 2  # right after the summary
    unchanged = next(i["item_id"] for i in report["items"] if i.get("unchanged_on_purpose"))
    protected = next(i["item_id"] for i in report["items"] if not i.get("unchanged_on_purpose"))
    assert page.index(f"alt='preview {protected}'") < page.index(f"alt='preview {unchanged}'")  # protected first


def test_render_reports_a_broken_image(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><head><title>t</title></head><body><h1>x</h1>"
                    "<img alt='bad' src='data:image/png;base64,AAAA'></body></html>")
    info = render_report(page)
    assert not info["ok"] and [i["alt"] for i in info["broken_images"]] == ["bad"]


def test_ct_previews_use_a_clinical_window(tiny_config):
    import numpy as np

    from medue.pipeline.job import CT_WINDOW_HU, display_window
    from medue.testing import make_volume

    cfg = load_config(tiny_config())
    assert run_pipeline(cfg).exit_code == EXIT_OK
    previews = {p.stem: np.load(p) for p in (cfg.output_path / "private" / "previews").glob("*.npz")}
    windows = [p["window"] for p in previews.values() if "window" in p.files]
    assert len(windows) == 1 and windows[0][0] < windows[0][1]  # the CT series; the NIfTI (OT) has none
    from medue.audit.report import _panel

    ct_preview = next(p for p in previews.values() if "window" in p.files)
    page = (cfg.output_path / "release" / "report.html").read_text()
    shown = [_panel(ct_preview["original"], ct_preview["protected"], t, w) for t, w in
             ((f"{stem} (CT, done, clinical window)", ct_preview["window"]) for stem in previews
              if "window" in previews[stem].files)]
    assert shown[0] in page  # the report draws the CT preview in its window (title and grey levels)
    ct = make_volume((2, 8, 8))
    ct.header.update(rescale_slope=1.0, rescale_intercept=-1024.0)
    ct = type(ct)(array=ct.array, geometry=ct.geometry, modality="CT", source=ct.source, header=ct.header)
    low, high = display_window(ct)
    assert (low, high) == (CT_WINDOW_HU[0] - CT_WINDOW_HU[1] / 2 + 1024, CT_WINDOW_HU[0] + CT_WINDOW_HU[1] / 2 + 1024)


def test_item_table_folds_when_long_and_sorts_by_a_clicked_column(tiny_config, tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    import medue.audit.report as report

    monkeypatch.setattr(report, "ITEMS_SHOWN_OPEN", 1)  # two items: folded, as a 2400-item release is
    cfg = load_config(tiny_config())
    assert run_pipeline(cfg).exit_code == EXIT_OK
    url = (cfg.output_path / "release" / "report.html").resolve().as_uri()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(), headless=True)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url, wait_until="load")
            details = page.locator("details.items")
            assert details.get_attribute("open") is None and "folded" in details.locator("summary").inner_text()
            assert not page.locator("table.sortable").is_visible()
            details.locator("summary").click()
            psnr = lambda: [float(t) for t in page.locator("table.sortable tbody tr td:nth-child(5)").all_inner_texts()]  # noqa: E731
            head = page.locator("table.sortable th", has_text="PSNR dB")
            head.click()
            up = psnr()
            head.click()
            down = psnr()
        finally:
            browser.close()
    assert errors == [] and len(up) == 2 and up == sorted(up) and down == sorted(up, reverse=True)


def _verdict(info, html_path):
    """The verdict line as the page shows it (the first paragraph of class verdict)."""
    import re

    page = html_path.read_text()
    m = re.search(r"<p class='verdict[^']*'[^>]*><b>Verdict:</b> (.*?)</p>", page, re.S)
    assert info["ok"], info
    return m.group(1) if m else ""


def test_the_verdict_line_is_right_for_an_own_release_a_strict_gate_and_a_preset(tiny_config, tmp_path):
    """#37: a new user's own release says NOT MEASURED; a strict gate that weakened every patterned item says so
    beside the measurement; a preset release on other data says its evidence is not this release's."""
    (tmp_path / "labels.csv").write_text("path,label\nseries_a,a\nvol.nii.gz,b\n")
    labels = {"source": "table", "table": str(tmp_path / "labels.csv")}
    own = load_config(tiny_config(labels=labels, protect={"method": "lines", "params": {"epsilon": 4}}))
    assert run_pipeline(own).exit_code == EXIT_OK
    html = own.output_path / "release" / "report.html"
    assert _verdict(render_report(html), html).startswith("NOT MEASURED: no efficacy result is attached")

    strict = load_config(tiny_config(labels=labels, protect={"method": "lines", "params": {"epsilon": 4}},
                                     fidelity={"max_abs_units": 2, "min_psnr_db": 20, "min_ssim": 0.5},
                                     output=str(tmp_path / "strict")))
    summary = run_pipeline(strict)
    html = strict.output_path / "release" / "report.html"
    line = _verdict(render_report(html), html)
    weakened = summary.protection["weakened_by_gate"]
    assert weakened == 1 and "Only 0 of 1 patterned items carry the protection in full" in line, line

    import yaml

    path = tiny_config(labels=labels, output=str(tmp_path / "preset"))
    data = yaml.safe_load(path.read_text())
    data["protect"] = {"preset": "lines-38db"}  # the preset's method, parameters and gate, nothing else
    data.pop("fidelity")
    path.write_text(yaml.safe_dump(data))
    preset = load_config(path)
    run_pipeline(preset)
    html = preset.output_path / "release" / "report.html"
    line = _verdict(render_report(html), html)
    assert line.startswith("NOT MEASURED ON THIS RELEASE: the attached result is") and "identical" not in line


def test_the_verdict_line_of_a_self_evaluation_that_cannot_fit(tmp_path):
    """A self-evaluation whose attackers train one epoch on 16 images does not fit: the page says NOT MEASURED and
    what to do, never a number of protection, and the diagnostic check is not a pass."""
    import json
    from pathlib import Path

    import numpy as np
    import yaml

    from medue.cli import main
    from medue.efficacy import write_image_set

    with np.load("sample_data/classification/br35h_64.npz") as d:
        idx = np.r_[0:10, 500:510]
        images, labels = d["images"][idx][:, ::4, ::4].copy(), d["labels"][idx]
    root = tmp_path / "site"
    write_image_set(root, images, labels, ["no", "yes"], fmt="nifti", test_fraction=0.0, name="site")
    cfg = {"name": "site", "input": str(root / "train"), "output": str(tmp_path / "out"),
           "key": {"env": "MEDUE_TEST_UNSET_KEY", "file": str(Path("pipelines/demo.key").resolve())},
           "labels": {"source": "table", "table": str(root / "train_labels.csv")},
           "protect": {"method": "lines", "params": {"epsilon": 4}},
           "fidelity": {"min_psnr_db": 20, "min_ssim": 0.5}, "tracking": {"enabled": False}}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", str(path), "--self", "--holdout", "0.2", "--attacks", "plain_cnn",
                 "resnet18_flip_crop", "--epochs", "1", "--seeds", "0", "--device", "cpu"]) == 0
    res = json.loads((tmp_path / "out" / "private" / "self_evaluation.json").read_text())
    assert not any(r["fit"] for r in res["rows"])  # one epoch on 16 images: nothing fitted
    html = tmp_path / "out" / "release" / "report.html"
    line = _verdict(render_report(html), html)
    assert line.startswith("NOT MEASURED: no everyday-habit attacker") and "--epochs" in line, line
    page = html.read_text()
    efficacy = page[page.index("What the protection stops"):page.index("Clinical utility")]
    assert "identical" not in efficacy  # (per-item PSNR may say "identical": a blank-class image is, measured)
    checks = page[page.index("<h2>Conformance"):]
    row = checks[checks.index("diagnostic"):][:400]
    assert "inconclusive" in row and ">pass<" not in row  # no clean model fitted: not a pass
