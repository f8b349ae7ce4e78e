import numpy as np
import pytest

from medue.errors import InvalidVolumeError, UnknownComponentError
from medue.protect import PROTECTORS
from medue.provenance import StepRecord, fingerprint_array, key_fingerprint
from medue.registry import Registry
from medue.testing import make_volume


def test_registry_did_you_mean_and_aliases():
    with pytest.raises(UnknownComponentError, match=r"unknown protector 'slam'; did you mean 'salm'\? available: conv, em"):
        PROTECTORS.get("slam")
    assert PROTECTORS.get("cuda-conv") is PROTECTORS.get("conv")
    assert PROTECTORS.keys() == ["conv", "em", "fields", "lines", "salm", "salm-samplewise", "sem", "t2ue", "uc"]


def test_registry_rejects_duplicates_and_uppercase():
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a", 2)
    with pytest.raises(ValueError, match="lowercase"):
        reg.add("B", 3)


def test_volume_with_array_checks_shape_dtype_and_appends_history():
    vol = make_volume((2, 8, 8))
    step = StepRecord(name="x")
    new = vol.with_array(vol.array + 1, step)
    assert new.history[-1] is step and len(new.history) == len(vol.history) + 1
    assert vol.array[0, 0, 0] + 1 == new.array[0, 0, 0]
    with pytest.raises(InvalidVolumeError, match="shape"):
        vol.with_array(vol.array[:1], step)
    with pytest.raises(InvalidVolumeError, match="dtype"):
        vol.with_array(vol.array.astype(np.int32), step)
    with pytest.raises(InvalidVolumeError, match="stored integer units"):
        type(vol)(array=vol.array.astype(np.float32), geometry=vol.geometry, modality="CT", source=vol.source)


def test_fingerprints_are_stable_and_key_is_not_exposed():
    a = np.arange(12, dtype=np.int16).reshape(3, 4)
    assert fingerprint_array(a) == fingerprint_array(a.copy())
    assert fingerprint_array(a) != fingerprint_array(a.astype(np.int32))
    fp = key_fingerprint("secret-key")
    assert len(fp) == 16 and "secret" not in fp and fp == key_fingerprint("secret-key") != key_fingerprint("other")
