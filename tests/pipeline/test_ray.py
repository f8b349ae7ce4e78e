import pytest

from medue.pipeline.config import load_config
from medue.pipeline.runner import EXIT_OK, run_pipeline

ray = pytest.importorskip("ray", reason="Ray backend needs the medue[ray] extra")


def test_ray_backend_matches_local(tiny_config):
    local = run_pipeline(load_config(tiny_config()))
    cfg = load_config(tiny_config(output=str(local.output) + "_ray", execution={"backend": "ray", "workers": 2}))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        summary = run_pipeline(cfg)
    finally:
        ray.shutdown()
    assert summary.exit_code == EXIT_OK and summary.counts["done"] == 2
    nifti = lambda s: sorted(o["sha256"] for m in s.markers if m.format == "nifti" for o in m.outputs)  # noqa: E731
    assert nifti(summary) == nifti(local)
