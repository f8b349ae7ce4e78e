"""A fitted protector on disk (medue.protector_file): tensors and JSON types only, read back to the same protection."""

from pathlib import Path

import pytest
import torch

from medue.errors import ProtectionError
from medue.protect import build_protector
from medue.protect.base import UnitSpace
from medue.protector_file import load_protector, save_protector


@pytest.mark.parametrize("method, params, labelled", [
    ("salm-samplewise", {"epsilon": 4, "max_rounds": 1, "inner_steps": 2, "train_steps": 2, "mask_ratio": 0.2}, True),
    ("salm-samplewise", {"epsilon": 4, "mode": "classwise", "placement": "flat", "init": "grating", "tile": 4,
              "max_rounds": 0, "blank_class": True}, True),
    ("em", {"epsilon": 4, "mode": "classwise", "max_rounds": 1, "inner_steps": 1, "train_steps": 2, "tile": 4}, True),
    ("uc", {"epsilon": 4, "extractor_steps": 2, "generator_steps": 2, "num_clusters": 2, "fit_resolution": 16},
     False),
    ("conv", {"epsilon": 4}, True),
    ("t2ue", {"epsilon": 4, "train_steps": 3, "reference_size": 16, "texts": ["no finding", "a tumour"]}, True),
])
def test_saved_protector_loads_without_pickle_and_perturbs_the_same(tmp_path, method, params, labelled):
    x = torch.round(torch.rand((6, 1, 16, 16), generator=torch.Generator().manual_seed(0)) * 200)
    y = torch.tensor([0, 1, 0, 1, 0, 1]) if labelled else None
    space = UnitSpace(0.0, 200.0, 0.0, 255.0)
    p = build_protector(method, **params)
    p.fit(x, y, space, generator=torch.Generator().manual_seed(1))
    save_protector(p, tmp_path / "p.pt")
    torch.load(tmp_path / "p.pt", weights_only=True)  # no pickled objects inside
    q = load_protector(tmp_path / "p.pt")
    assert q.params() == p.params() and q.state_fingerprint() == p.state_fingerprint()
    a = p.perturb(x, y, space, generator=torch.Generator().manual_seed(2))
    b = q.perturb(x, y, space, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_a_damaged_a_pickled_or_a_foreign_file_is_refused_with_the_way_out(tmp_path):
    p = build_protector("lines")
    save_protector(p, tmp_path / "p.pt")
    data = (tmp_path / "p.pt").read_bytes()
    (tmp_path / "damaged.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ProtectionError, match="not a readable medue protector file.*refit the release"):
        load_protector(tmp_path / "damaged.pt")
    torch.save({"format": "something/1", "method": "lines"}, tmp_path / "foreign.pt")
    with pytest.raises(ProtectionError, match=r"foreign.pt: not a medue protector \(expected format medue.protector/1\)"
                                              ".*run without --resume"):
        load_protector(tmp_path / "foreign.pt")

    # a pickled object is never loaded: the read refuses it before any code runs
    torch.save({"format": "medue.protector/1", "obj": Path("x")}, tmp_path / "pickle.pt")
    with pytest.raises(ProtectionError, match="holds objects other than tensors"):
        load_protector(tmp_path / "pickle.pt")


def test_the_file_holds_exactly_the_payload_and_an_unfitted_protector_stays_unfitted(tmp_path):
    p = build_protector("fields", epsilon=4)
    save_protector(p, tmp_path / "p.pt")
    data = torch.load(tmp_path / "p.pt", weights_only=True)
    assert data.keys() == p.to_payload().keys() and data["params"] == p.params() and data["fitted"] is False
    assert load_protector(tmp_path / "p.pt").fitted is False
