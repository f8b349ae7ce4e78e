from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_addoption(parser):
    parser.addoption("--device", action="store", default=os.environ.get("MEDUE_TEST_DEVICE"),
                     help="run device-parametrised tests on this device only (cpu or cuda)")


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--device")
        metafunc.parametrize("device", [chosen] if chosen else DEVICES)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def tiny_config(tmp_path: Path):
    """Write a fast pipeline config over synthetic inputs; returns a function (overrides) -> config path."""
    from medue.testing import make_dicom_series, make_nifti

    inputs = tmp_path / "in"
    make_dicom_series(inputs / "series_a", slices=4, size=24, seed=1)
    make_nifti(inputs / "vol.nii.gz", shape=(20, 16, 3), seed=2)
    (tmp_path / "site.key").write_text("test-key-123-long-enough")
    (tmp_path / "site.key").chmod(0o600)  # as a site keeps it

    def write(**overrides) -> Path:
        cfg = {
            "name": "test-release",
            "input": str(inputs),
            "output": str(tmp_path / "out"),
            "deidentification": "refuse",
            "key": {"env": "MEDUE_TEST_UNSET_KEY", "file": str(tmp_path / "site.key")},
            "protect": {"method": "salm-samplewise", "params": {"epsilon": 4, "mask_ratio": 0.1, "max_rounds": 1,
                                                      "inner_steps": 2, "train_steps": 2},
                        "fit_max_slices": 8, "fit_size": 16, "reversible": True},
            "fidelity": {"min_psnr_db": 20, "min_ssim": 0.5, "max_abs_units": 4},
            "execution": {"device": "cpu", "workers": 1},
            "tracking": {"enabled": False},
            "report": {"enabled": True},
        }
        for k, v in overrides.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k] = {**cfg[k], **v}
            else:
                cfg[k] = v
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write
