"""The streamed, checkpointed and distributed dataset-level fit (medue.store)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from medue.device import make_generator
from medue.pipeline.config import load_config
from medue.errors import InvalidConfigError
from medue.pipeline.runner import EXIT_OK, fit_release, run_pipeline
from medue.protect import UnitSpace, build_protector
from medue.store import FitCheckpoint, RowFile, SliceStore, SliceWriter

SPACE = UnitSpace(0.0, 255.0, 0.0, 255.0)


def _data(n=40, size=16):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 200, (n, 1, size, size), generator=gen).float()
    return x, torch.arange(n) % 2


def _fit(x, y, checkpoint=None, stop_after=None, **params):
    params = {"mode": "samplewise", "max_rounds": 3, "stop_accuracy": 1.0, "inner_steps": 3, "train_steps": 3,
              "batch_size": 16, "rho": 2, **params}
    p = build_protector("sem", **params)
    p.checkpoint = checkpoint
    if stop_after is not None:
        def progress(msg):
            if msg.startswith(f"round {stop_after}/"):
                raise KeyboardInterrupt  # killed right after a round was recorded
        p.progress = progress
    return p, p.fit(x, y, SPACE, generator=make_generator(5))


def test_a_store_on_disk_gives_the_in_memory_fit(tmp_path):
    x, y = _data()
    writer = SliceWriter(tmp_path / "slices.f32")
    for part in x.split(7):  # item after item
        writer.append(part)
    store = writer.close()
    assert store.shape == x.shape and torch.equal(store[torch.tensor([3, 1, 39])], x[[3, 1, 39]])
    mem, d_mem = _fit(x, y)
    disk, d_disk = _fit(store, y, FitCheckpoint(tmp_path / "ckpt", {"release": "a"}))
    assert isinstance(d_disk, RowFile) and d_disk.dtype == np.int16
    assert torch.equal(torch.from_numpy(d_disk.to_array().astype(np.float32)), d_mem)
    assert d_mem.abs().max() <= 8 and d_mem.abs().sum() > 0 and len(mem.history) == 3
    assert mem.history == disk.history


def _whole_and_interrupted(tmp_path, *folders):
    """A store, an uninterrupted fit in ``a``, and a fit killed after round 2 in each of ``folders``."""
    x, y = _data()
    store = SliceStore(x.numpy())
    whole = _fit(store, y, FitCheckpoint(tmp_path / "a", {"release": "a"}))
    for folder in folders:
        with pytest.raises(KeyboardInterrupt):
            _fit(store, y, FitCheckpoint(tmp_path / folder, {"release": "a"}), stop_after=2)
    return store, y, whole


def test_an_interrupted_fit_continues_to_the_same_result(tmp_path):
    store, y, (whole, d_whole) = _whole_and_interrupted(tmp_path, "b")
    record = json.loads((tmp_path / "b" / "checkpoint.json").read_text())
    assert record["round"] == 1 and record["buffer"] == "delta1.i16"
    # another release's checkpoint is never continued; this one is, from round 2
    other, _ = _fit(store, y, FitCheckpoint(tmp_path / "b", {"release": "other"}, resume=True), max_rounds=1)
    assert other.checkpoint.resumed_from is None and "release differ" in other.checkpoint.not_continued
    with pytest.raises(KeyboardInterrupt):
        _fit(store, y, FitCheckpoint(tmp_path / "b", {"release": "a"}), stop_after=2)
    cont, d_cont = _fit(store, y, FitCheckpoint(tmp_path / "b", {"release": "a"}, resume=True))
    assert cont.checkpoint.resumed_from == 1
    assert np.array_equal(d_cont.to_array(), d_whole.to_array()) and cont.history == whole.history
    for a, b in zip(whole.model.state_dict().values(), cont.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_damaged_checkpoint_is_never_continued_on_a_silent_substitute(tmp_path):
    import pickle

    store, y, (whole, d_whole) = _whole_and_interrupted(tmp_path, "b", "c")
    buffer = tmp_path / "b" / "delta1.i16"  # the buffer the checkpoint names, truncated
    buffer.write_bytes(buffer.read_bytes()[:64])
    cont, d_cont = _fit(store, y, FitCheckpoint(tmp_path / "b", {"release": "a"}, resume=True))
    assert cont.checkpoint.resumed_from is None and "delta buffer delta1.i16" in cont.checkpoint.not_continued
    assert np.array_equal(d_cont.to_array(), d_whole.to_array())  # refitted from round 1: the same noise

    state = tmp_path / "c" / "state.pt"  # replaced by a pickle, and its record made to match
    state.write_bytes(pickle.dumps({"model": ValueError("a pickled object")}))
    record = json.loads((tmp_path / "c" / "checkpoint.json").read_text())
    from medue.provenance import sha256_file

    record["state_sha256"] = sha256_file(state)
    (tmp_path / "c" / "checkpoint.json").write_text(json.dumps(record))
    cont, d_cont = _fit(store, y, FitCheckpoint(tmp_path / "c", {"release": "a"}, resume=True))
    assert cont.checkpoint.resumed_from is None and "other than tensors" in cont.checkpoint.not_continued
    assert np.array_equal(d_cont.to_array(), d_whole.to_array())


def test_a_protector_file_that_is_a_pickle_is_refused_with_medue_s_message(tmp_path):
    import pickle

    from medue.errors import ProtectionError
    from medue.protector_file import load_protector, save_protector

    path = tmp_path / "protector.pt"
    path.write_bytes(pickle.dumps({"format": ValueError("a pickled object")}))
    with pytest.raises(ProtectionError, match="not a readable medue protector file.*never loads"):
        load_protector(path)
    path.write_bytes(b"\x80\x04truncated")
    with pytest.raises(ProtectionError, match="not a readable medue protector file"):
        load_protector(path)


def _em_config(tmp_path, **protect):
    from medue.testing import make_nifti

    inputs = tmp_path / "in"
    for k in range(4):
        make_nifti(inputs / f"v{k}.nii.gz", shape=(16, 16, 3), seed=k)
    (tmp_path / "site.key").write_text("stream-test-key-0123456789")
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(f"v{k}.nii.gz,{'ab'[k % 2]}\n" for k in range(4)))
    cfg = {"name": "stream", "input": str(inputs), "output": str(tmp_path / "out"),
           "key": {"env": "MEDUE_TEST_UNSET_KEY", "file": str(tmp_path / "site.key")},
           "labels": {"source": "table", "table": str(tmp_path / "labels.csv")},
           "protect": {"method": "em", "params": {"epsilon": 4, "max_rounds": 3, "stop_accuracy": 1.0,
                                                  "inner_steps": 2, "train_steps": 2, "batch_size": 4}, **protect},
           "fidelity": {"min_psnr_db": 20, "min_ssim": 0.5, "max_abs_units": 4},
           "execution": {"device": "cpu", "workers": 1}, "tracking": {"enabled": False},
           "report": {"enabled": False}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_release_fits_every_slice_and_resume_continues_an_interrupted_fit(tmp_path, monkeypatch):
    from medue.pipeline import fit

    config = load_config(_em_config(tmp_path))
    monkeypatch.setattr(fit, "MAX_FIT_BYTES", 1)  # the in-memory cap no longer applies to a streamed fit
    summary = run_pipeline(config)
    assert summary.exit_code == EXIT_OK
    info = json.loads((config.output_path / "private" / "protector.json").read_text())
    assert info["slices"] == 12 and info["streamed_from_disk"] and info["items_with_fitted_delta"] == 4
    assert not (config.output_path / "private" / "fit").exists()  # slices and buffers go once the fit is saved
    noise = {p.name: np.load(p)["delta"] for p in (config.output_path / "private" / "noise").glob("*.npz")}
    # medue fit on a folder that holds this release: nothing to do with --resume; without, a new fit is refused
    said = []
    assert fit_release(config, resume=True, progress=said.append).slices == 12 and "nothing to fit" in said[-1]
    with pytest.raises(InvalidConfigError, match="mix two protections"):
        fit_release(config)

    # a second release, killed after its second round: --resume continues the fit, not a new one
    config2 = load_config(tmp_path / "pipeline.yaml", overrides={"output": str(tmp_path / "out2")})

    def stop(msg):
        if msg.startswith("round 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config2, progress=stop)
    assert (config2.output_path / "private" / "fit" / "checkpoint.json").exists()
    assert not (config2.output_path / "private" / "protector.json").exists()
    said = []
    assert run_pipeline(config2, resume=True, progress=said.append).exit_code == EXIT_OK
    assert any("continuing the fit from its checkpoint" in s for s in said)
    info2 = json.loads((config2.output_path / "private" / "protector.json").read_text())
    assert info2["resumed_after_round"] == 1 and info2["surrogate_accuracy_per_round"] == \
        info["surrogate_accuracy_per_round"]
    noise2 = {p.name: np.load(p)["delta"] for p in (config2.output_path / "private" / "noise").glob("*.npz")}
    assert noise2.keys() == noise.keys() and all(np.array_equal(noise[k], noise2[k]) for k in noise)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with the gloo backend on localhost")
def test_torchrun_fit_in_two_processes_then_run_resume_exports(tmp_path):
    path = _em_config(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "medue.cli", "fit", str(path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 process(es)" in done.stdout and done.stdout.count("fitted em") == 1  # process 0 reports
    out = tmp_path / "out"
    info = json.loads((out / "private" / "protector.json").read_text())
    assert info["processes"] == 2 and info["slices"] == 12 and info["items_with_fitted_delta"] == 4
    noise = [np.load(p)["delta"] for p in sorted((out / "private" / "noise").glob("*.npz"))]
    # every batch (4 slices: batch b belongs to process b % 2) got its noise, so both processes wrote theirs
    rows = np.concatenate(noise)
    assert all(np.abs(rows[i:i + 4]).sum() > 0 for i in range(0, 12, 4)) and np.abs(rows).max() <= 4
    config = load_config(path)
    said = []
    summary = run_pipeline(config, resume=True, progress=said.append)
    assert summary.exit_code == EXIT_OK and summary.counts["done"] == 4
    assert any("reusing fitted em protector" in s for s in said)


def test_row_files_read_any_rows_in_any_order_and_travel_to_other_processes(tmp_path):
    import pickle

    from medue.store import create_row_file

    rows = create_row_file(tmp_path / "r.i16", (10, 1, 3, 3), np.int16)
    data = np.arange(90, dtype=np.int16).reshape(10, 1, 3, 3)
    rows.write(0, data[:6])
    rows.write(6, data[6:])
    assert np.array_equal(rows.read(np.array([7, 2, 2, 0])), data[[7, 2, 2, 0]])
    assert np.array_equal(rows.read(slice(3, 9, 2)), data[3:9:2]) and rows.read(slice(4, 4)).shape == (0, 1, 3, 3)
    again = pickle.loads(pickle.dumps(rows))  # reopened by path, not copied
    assert np.array_equal(again.to_array(), data)
    with pytest.raises(ValueError, match="expected 360"):
        RowFile(tmp_path / "r.i16", (20, 1, 3, 3), np.int16)


def test_auto_surrogate_is_strided_at_ct_resolution_and_the_saved_protector_says_so(tmp_path):
    from medue.protector_file import load_protector, save_protector

    for size, arch in ((16, "small"), (256, "strided")):
        x, y = _data(n=4, size=size)
        p, _ = _fit(x, y, max_rounds=1, inner_steps=1, train_steps=1, batch_size=4)
        assert p.params()["surrogate"] == arch and p.model.stem[0].stride == ((2, 2) if arch == "strided" else (1, 1))
        save_protector(p, tmp_path / f"{size}.pt")
        back = load_protector(tmp_path / f"{size}.pt")
        assert back.params()["surrogate"] == arch and back.state_fingerprint() == p.state_fingerprint()
