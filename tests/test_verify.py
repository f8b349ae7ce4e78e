"""medue verify: a keyed test of whether a model learned a release's class fields."""

import numpy as np
import pytest
import torch
from torch import nn

from medue.device import make_generator
from medue.protect import build_protector
from medue.protect.base import UnitSpace
from medue.verify import NotVerifiable, check_verifiable, control_protectors, keyed_test, load_suspect


def _images(n, seed, size=32):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        r = rng.uniform(0.3, 0.45) * size
        level = rng.uniform(90, 160)
        out.append((((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r * r) * level).astype(np.uint8))
    return out


def _fields():
    p = build_protector("fields", epsilon=24, psnr_db=30.0, psnr_range="dtype", periods=[0.125, 0.5],
                        jitter_deg=10.0)
    p.fit(torch.zeros(2, 1, 1, 1), torch.tensor([0, 1]), None, generator=make_generator(11), return_delta=False)
    return p


def _train(x, y, seed=0, steps=150):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 5, padding=2),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for i in range(steps):
        idx = torch.randint(len(x), (32,))
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return lambda a: torch.softmax(net(torch.from_numpy(a)), 1).detach().numpy()


@pytest.fixture(scope="module")
def models():
    p = _fields()
    imgs = _images(200, 0)
    y = torch.arange(200) % 2
    x = torch.from_numpy(np.stack(imgs).astype(np.float32))[:, None]
    space = UnitSpace(0.0, 160.0, 0.0, 255.0)
    released = (x + p.perturb(x, y, space, generator=make_generator(0))) / 255
    brightness = (x.flatten(1).amax(1) > 125).long()  # a clean task: bright or dark disc
    return p, _train(released, y, steps=300), _train(x / 255, brightness, seed=1, steps=300)


def test_a_model_trained_on_the_release_is_detected_and_a_clean_one_is_not(models):
    p, trained, clean = models
    probes, labels = _images(40, 5), [i % 2 for i in range(40)]
    hit = keyed_test(trained, probes, labels, p, controls=19)
    assert hit.detected and hit.p_value < 0.01 and hit.release_score > hit.control_mean
    assert hit.queries == 40 * 20 and hit.probes == 40 and hit.mode == "probabilities"
    assert "was trained on this release" in hit.sentence
    miss = keyed_test(clean, probes, labels, p, controls=19)
    assert not miss.detected and "No evidence" in miss.sentence
    # top-1 labels only (black box): the same test on whether the probe reads as the field's class
    labels_only = keyed_test(lambda a: trained(a).argmax(1), probes, labels, p, controls=19)
    assert labels_only.mode == "labels" and labels_only.detected
    assert keyed_test(trained, probes, labels, p, controls=19).to_dict() | {"seconds": 0} == \
        hit.to_dict() | {"seconds": 0}  # deterministic


def test_controls_are_never_the_release_key_and_unverifiable_methods_are_refused():
    p = _fields()
    ctrl = control_protectors(p, 3)
    assert len({c.waves.numpy().tobytes() for c in ctrl} | {p.waves.numpy().tobytes()}) == 4
    assert all(c.params() == p.params() for c in ctrl)
    assert check_verifiable(p) == "key"
    sample_wise = build_protector("em", mode="samplewise", epsilon=4)
    with pytest.raises(NotVerifiable, match="cannot be verified"):
        control_protectors(sample_wise, 3)


def _phase_only():
    p = build_protector("fields", epsilon=24, psnr_db=30.0, psnr_range="dtype")
    p.fit(torch.zeros(2, 1, 1, 1), torch.tensor([0, 1]), None, generator=make_generator(1), return_delta=False)
    return p


def _lines(x, y, space):
    p = build_protector("lines")
    p.fit(x, y, space, generator=make_generator(3), return_delta=False)
    return p


def test_setting_controls_turn_the_lines_and_rescale_the_fields():
    """An unkeyed setting's controls: the same lines turned 30-60 degrees off both class orientations, on the same
    placement and at the same strength (the blank class stays blank); the same fields 1.6-2.5 times coarser or
    finer along the same orientation."""
    x = torch.from_numpy(np.stack(_images(4, 2)).astype(np.float32))[:, None]
    space = UnitSpace(0.0, 160.0, 0.0, 255.0)
    y = torch.tensor([1, 1, 1, 1])
    lines = _lines(x, torch.tensor([0, 1, 0, 1]), space)
    assert check_verifiable(lines) == "setting"
    release = lines.perturb(x, y, space, generator=make_generator(0))
    for c in control_protectors(lines, 4):
        d = c.perturb(x, y, space, generator=make_generator(0))
        assert d.max() == release.max() and ((d != 0) == 0).sum() > 0
        # the same placement (the flattest pixels), another pattern: columns and rows both vary
        assert ((d != 0) & (release == 0)).any() and d[:, 0].ne(0).float().mean(1).std() > 0
        assert c.perturb(x, torch.zeros(4, dtype=torch.long), space, generator=make_generator(0)).abs().sum() == 0
    fields = _phase_only()
    assert check_verifiable(fields) == "setting"
    ratios = []
    for c in control_protectors(fields, 12):
        ratio = (c.waves[:, 0, 0] / fields.waves[:, 0, 0]).numpy()
        assert np.allclose(ratio, ratio[0]) and 1.6 - 1e-4 <= max(ratio[0], 1 / ratio[0]) <= 2.5 + 1e-4
        assert torch.equal(c.waves[:, 0, 1], fields.waves[:, 0, 1])  # same orientation, another frequency
        ratios.append(ratio[0])
    assert min(ratios) < 1 < max(ratios)  # coarser and finer: the release's frequency is bracketed


@pytest.mark.parametrize("setting", ["lines", "fields"])
def test_a_model_trained_on_an_unkeyed_setting_is_detected_as_that_setting(setting):
    imgs = _images(200, 0)
    y = torch.arange(200) % 2
    x = torch.from_numpy(np.stack(imgs).astype(np.float32))[:, None]
    space = UnitSpace(0.0, 160.0, 0.0, 255.0)
    p = _lines(x, y, space) if setting == "lines" else _phase_only()
    released = (x + p.perturb(x, y, space, generator=make_generator(0))) / 255
    trained = _train(released, y, steps=300)
    clean = _train(x / 255, (x.flatten(1).amax(1) > 125).long(), seed=1, steps=300)
    probes, labels = _images(40, 5), [i % 2 for i in range(40)]
    hit = keyed_test(trained, probes, labels, p, controls=19)
    assert hit.claim == "setting" and hit.detected, hit.to_dict()
    assert "protected with this release's setting" in hit.sentence and "another site's" in hit.sentence
    miss = keyed_test(clean, probes, labels, p, controls=19)
    assert not miss.detected, miss.to_dict()


def test_a_torchscript_suspect_gets_probabilities(tmp_path):
    net = torch.jit.trace(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval(), torch.zeros(1, 1, 4, 4))
    net.save(str(tmp_path / "m.pt"))
    out = load_suspect(tmp_path / "m.pt")(np.zeros((2, 1, 4, 4), dtype=np.float32))
    assert out.shape == (2, 3) and np.allclose(out.sum(1), 1)
    from medue.errors import InvalidConfigError

    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(InvalidConfigError, match="not a TorchScript model"):
        load_suspect(tmp_path / "bad.pt")
    with pytest.raises(InvalidConfigError, match="no such file"):
        load_suspect(tmp_path / "missing.pt")


def test_medue_verify_on_a_release_written_by_medue_run(tiny_config, tmp_path, capsys):
    import json as _json

    from medue.cli import main

    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nseries_a,a\nvol.nii.gz,b\n")
    fields = {"method": "fields", "params": {"epsilon": 4, "psnr_db": 20, "periods": [0.1667, 0.3333]},
              "fit_max_slices": None, "fit_size": None}
    cfg = tiny_config(protect=fields, labels={"source": "table", "table": str(labels)})
    assert main(["run", str(cfg), "--quiet"]) == 0
    net = torch.jit.trace(nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16, 2)).eval(),
                          torch.zeros(1, 1, 24, 24))
    net.save(str(tmp_path / "suspect.pt"))
    capsys.readouterr()
    assert main(["verify", str(cfg), "--model", str(tmp_path / "suspect.pt"), "--controls", "5", "--json"]) == 0
    out = _json.loads(capsys.readouterr().out)
    assert out["method"] == "fields" and out["controls"] == 5 and out["queries"] == out["probes"] * 6
    assert not out["detected"] and "No evidence" in out["sentence"]  # a model that never saw the release
    # the wrong key is refused before any query; a phase-only setting is verified as a setting
    (tmp_path / "other.key").write_text("another-key-of-enough-length-42")
    assert main(["verify", str(tmp_path / "out"), "--model", str(tmp_path / "suspect.pt"),
                 "--key-file", str(tmp_path / "other.key")]) == 2
    assert "does not match the release's fit" in capsys.readouterr().err
    cfg = tiny_config(protect={**fields, "params": {"epsilon": 4, "psnr_db": 20}},
                      labels={"source": "table", "table": str(labels)}, output=str(tmp_path / "out2"))
    assert main(["run", str(cfg), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["verify", str(cfg), "--model", str(tmp_path / "suspect.pt"), "--controls", "5", "--json"]) == 0
    out = _json.loads(capsys.readouterr().out)
    assert out["claim"] == "setting" and not out["detected"]
    # a method without a class pattern: one line, exit 2
    cfg = tiny_config(protect={"method": "em", "params": {"epsilon": 2, "mode": "samplewise", "max_rounds": 1,
                                                          "inner_steps": 1}, "fit_max_slices": None,
                               "fit_size": None},
                      labels={"source": "table", "table": str(labels)}, output=str(tmp_path / "out3"))
    assert main(["run", str(cfg), "--quiet"]) == 0
    assert main(["verify", str(cfg), "--model", str(tmp_path / "suspect.pt")]) == 2
    assert "cannot be verified" in capsys.readouterr().err
