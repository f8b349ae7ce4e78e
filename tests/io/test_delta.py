import io

import numpy as np
import pytest

from medue.errors import ExportError
from medue.io.delta import restore_original, write_delta
from medue.provenance import fingerprint_array


@pytest.mark.parametrize("dtype,amplitude", [(np.int16, 8), (np.uint16, 300), (np.uint8, 100)])
def test_delta_restores_the_original_bit_exactly(tmp_path, dtype, amplitude):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    original = rng.integers(max(info.min, -1000), min(info.max, 3000) - amplitude, (6, 40, 48)).astype(dtype)
    original[0, 0, 0] = max(info.min, -1000)
    protected = original.copy()
    protected[:, ::3, :20] += amplitude  # a line pattern, as a release's class-wise noise
    path = write_delta(original, protected, tmp_path / "d.npz")
    with np.load(path, allow_pickle=False) as data:
        assert data["delta"].dtype == (np.int8 if amplitude <= 127 else np.int16)
    restored = restore_original(protected, path)
    assert restored.dtype == original.dtype and np.array_equal(restored, original)
    with pytest.raises(ExportError, match="does not belong"):
        restore_original(protected[:, :, ::-1].copy(), path)


def test_delta_of_a_large_patterned_volume_is_small(tmp_path):
    original = np.random.default_rng(1).integers(-1000, 2000, (20, 256, 256)).astype(np.int16)
    protected = original.copy()
    protected[:, ::3, :110] += 8
    path = write_delta(original, protected, tmp_path / "d.npz")
    assert path.stat().st_size < original.nbytes / 30


def test_delta_files_of_earlier_versions_are_still_restored(tmp_path):
    original = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    protected = original.copy()
    protected[1, 2, 3] += 5
    protected[2, 0, 0] -= 4
    diff = protected.astype(np.int64) - original
    idx = np.flatnonzero(diff)
    buf = io.BytesIO()
    np.savez_compressed(buf, indices=idx, values=diff.ravel()[idx].astype(np.int16),
                        shape=np.asarray(original.shape), original_fingerprint=np.asarray(fingerprint_array(original)),
                        protected_fingerprint=np.asarray(fingerprint_array(protected)))
    (tmp_path / "old.npz").write_bytes(buf.getvalue())
    assert np.array_equal(restore_original(protected, tmp_path / "old.npz"), original)


def test_a_delta_written_with_the_key_is_authenticated_by_it(tmp_path):
    from medue.io.delta import DeltaAuthenticationError, delta_authenticated

    rng = np.random.default_rng(1)
    original = rng.integers(0, 1000, (2, 8, 8)).astype(np.int16)
    protected = original + rng.integers(-4, 5, original.shape).astype(np.int16)
    signed = write_delta(original, protected, tmp_path / "signed.npz", key="site-key-long-enough-1")
    assert delta_authenticated(signed)
    assert (restore_original(protected, signed, key="site-key-long-enough-1") == original).all()
    with pytest.raises(DeltaAuthenticationError, match="not authentic"):
        restore_original(protected, signed, key="another-key-long-enough-2")
    plain = write_delta(original, protected, tmp_path / "plain.npz")
    assert not delta_authenticated(plain)
    assert (restore_original(protected, plain) == original).all()  # fingerprints only, without a key
    with pytest.raises(DeltaAuthenticationError, match="carries no MAC"):
        restore_original(protected, plain, key="site-key-long-enough-1")
