"""Text-to-unlearnable-example (medue.protect.t2ue): class noise generated from text, the images never read."""

import pytest
import torch

from medue.device import make_generator
from medue.protect import build_protector
from medue.protect.base import UnitSpace


def test_t2ue_text_embedding_is_deterministic_and_relates_shared_words():
    from medue.protect.t2ue import embed_text

    a, b = embed_text("brain MRI with a tumour"), embed_text("brain MRI with a tumour")
    assert torch.equal(a, b) and abs(float(a.norm()) - 1) < 1e-6
    near, far = float(a @ embed_text("brain MRI without a tumour")), float(a @ embed_text("chest x-ray fracture"))
    assert near > far


def test_t2ue_is_zero_contact_the_images_never_enter_the_fit():
    space = UnitSpace(0.0, 255.0, 0.0, 255.0)
    y = torch.tensor([0, 1, 0, 1])
    kw = dict(texts=["brain MRI, no tumour", "brain MRI with a tumour"], train_steps=6, reference_size=16, epsilon=8)
    a = build_protector("t2ue", **kw)
    a.fit(torch.zeros(4, 1, 16, 16), y, space, generator=make_generator(3), return_delta=False)
    b = build_protector("t2ue", **kw)
    b.fit(torch.round(torch.rand(4, 1, 24, 24) * 255), y, space, generator=make_generator(3), return_delta=False)
    assert a.state_fingerprint() == b.state_fingerprint() != ""  # same key and texts: same generator
    x = torch.zeros(2, 1, 16, 16)
    x[:, :, :, 8:] = 150  # a body on the right half: the pattern goes on the flat background
    d = a.perturb(x, torch.tensor([0, 1]), space, generator=make_generator(0))
    assert torch.equal(d, torch.round(d)) and float(d.min()) >= 0 and float(d.max()) <= 8
    assert float((d != 0).float().mean()) <= 0.15 and not torch.equal(d[0], d[1])
    with pytest.raises(ValueError, match="one text per class"):
        build_protector("t2ue", texts=["only one"], train_steps=1).fit(
            x, torch.tensor([0, 2]), space, generator=make_generator(0))


def test_t2ue_fit_is_the_same_whatever_the_thread_count():
    space = UnitSpace(0.0, 255.0, 0.0, 255.0)
    y = torch.tensor([0, 1])
    threads = torch.get_num_threads()
    fingerprints = []
    try:
        for n in (2, 2, 1):
            torch.set_num_threads(n)
            p = build_protector("t2ue", epsilon=8, train_steps=20)
            p.fit(torch.zeros(2, 1, 8, 8), y, space, generator=make_generator(5), return_delta=False)
            fingerprints.append(p.state_fingerprint())
            assert torch.get_num_threads() == n  # the caller's setting is restored
    finally:
        torch.set_num_threads(threads)
    assert len(set(fingerprints)) == 1
