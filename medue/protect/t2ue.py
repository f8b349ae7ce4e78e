"""``t2ue``: text-to-unlearnable-example, zero-contact protection: the noise comes from text alone.

After T2UE (text-to-unlearnable-example, 2025): a text-conditioned noise generator is trained by error minimisation
against a surrogate on a *reference* set, so that at release time the noise of an image is a function of a text
that describes it (here: its class, e.g. "brain MRI with a tumour"), and the images themselves never enter the
fitting. A site can send only the texts to whoever holds the generator and get the noise back.

What follows the idea: a generator maps a text embedding to a noise pattern; it is trained with the min-min
objective of error-minimising noise (Huang et al. 2021) against a surrogate that is trained at the same time, on
reference images that are not the release's; a release applies the generator to its class texts, class-wise.

What is ours, and why:

* **Text encoder**: a hashed n-gram embedding (:func:`embed_text`: word unigrams and bigrams and character 3- to
  5-grams, signed feature hashing with BLAKE2b into 256 dimensions, L2-normalised). It runs offline, needs no
  weights (no model can be downloaded here and none ships inside the required packages), is identical on every
  machine, and maps texts that share words to nearby embeddings. A learned text encoder would relate synonyms;
  this one does not, so the same class should be described with the same words.
* **Reference set**: synthetic images made from the key (:func:`reference_images`: a dark background and a
  textured, rounded body of random size, like a cross-section), at ``reference_size`` px. The generator learns
  text-to-pattern maps that any surrogate picks up fast on images of this kind; none of the release's pixels are
  used. Its training texts are the release's class texts plus random texts drawn from a small radiology vocabulary,
  so it learns a map from text, not a table of the few texts it will be asked for.
* **Pattern and budget**: the generator outputs one ``tile`` x ``tile`` pattern per text, in ``[0, 1]``, scaled to
  ``epsilon`` stored units, rounded, tiled over the image and placed on the flattest ``mask_ratio`` of each image
  (:func:`medue.protect.masks.flat_region_mask`, background first), as medue's class-wise SALM places its lines, so
  a release stays inside the fidelity budget. The pattern is non-negative (a negative change on black background
  would be clipped away).

The generator's weights are saved with the release's private protector state; their SHA-256 is the protector's
``state_fingerprint`` in the provenance.
"""

from __future__ import annotations

import hashlib
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medue.device import single_thread
from medue.protect.base import Protector, UnitSpace, per_sample_mask, project
from medue.protect.masks import flat_region_mask
from medue.protect.minmin import tile_to
from medue.protect.surrogate import make_surrogate

EMBED_DIM = 256

#: Words of the random training texts (a radiology vocabulary); the class texts are added to them.
VOCABULARY = ("brain", "chest", "abdomen", "pelvis", "knee", "spine", "liver", "lung", "kidney", "heart", "MRI",
              "CT", "x-ray", "ultrasound", "T1", "T2", "FLAIR", "contrast", "axial", "coronal", "sagittal", "normal",
              "no", "with", "without", "tumour", "lesion", "mass", "nodule", "fracture", "oedema", "haemorrhage",
              "infarct", "cyst", "benign", "malignant", "left", "right", "small", "large", "multiple", "single",
              "finding", "scan", "image", "slice", "patient", "study", "abnormal", "healthy", "grade", "stage")


def embed_text(text: str, dim: int = EMBED_DIM) -> torch.Tensor:
    """Hashed n-gram embedding of ``text``: a deterministic ``(dim,)`` float32 unit vector, no weights.

    Word unigrams and bigrams and character 3- to 5-grams (of the lower-cased text with its words joined by
    spaces) are hashed with BLAKE2b to a bucket and a sign (the hashing trick); the counts are L2-normalised.
    """
    words = text.lower().split()
    joined = f" {' '.join(words)} "
    grams = [f"w:{w}" for w in words] + [f"b:{a} {b}" for a, b in zip(words, words[1:])]
    grams += [f"c:{joined[i:i + n]}" for n in (3, 4, 5) for i in range(max(0, len(joined) - n + 1))]
    vec = torch.zeros(dim)
    for g in grams:
        h = int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little")
        vec[h % dim] += 1.0 if (h >> 63) & 1 else -1.0
    norm = vec.norm()
    return vec / norm if norm > 0 else vec


def reference_images(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, 1, size, size)`` synthetic images in ``[0, 1]``: dark background, a textured rounded body."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centre = (torch.rand((n, 2), generator=generator) - 0.5) * 0.4
    radius = 0.45 + 0.45 * torch.rand((n, 2), generator=generator)
    body = (((xx - centre[:, 0, None, None]) / radius[:, 0, None, None]) ** 2
            + ((yy - centre[:, 1, None, None]) / radius[:, 1, None, None]) ** 2) < 1.0
    texture = F.interpolate(torch.rand((n, 1, 8, 8), generator=generator), size=(size, size), mode="bilinear",
                            align_corners=False)
    fine = F.avg_pool2d(torch.rand((n, 1, size, size), generator=generator), 3, stride=1, padding=1)
    return (body.unsqueeze(1) * (0.35 + 0.45 * texture + 0.2 * fine)).clamp(0, 1)


class TextNoiseGenerator(nn.Module):
    """Text embedding -> one ``tile`` x ``tile`` pattern in ``[0, 1]`` (a two-layer MLP)."""

    def __init__(self, tile: int, dim: int = EMBED_DIM, hidden: int = 256) -> None:
        super().__init__()
        self.tile = tile
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, tile * tile))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(4.0 * self.net(embedding)).view(-1, 1, self.tile, self.tile)


class T2UEProtector(Protector):
    """Class-wise noise generated from a text per class; the release's images never enter the fitting.

    Args:
        texts: One description per class, in the order of the release's classes (sorted names); default
            ``"class 0"``, ``"class 1"``… Describe classes the way a report would ("brain MRI with a tumour").
        tile: Period of the generated pattern in pixels.
        mask_ratio: Fraction of each image (its flattest pixels) that carries the pattern.
        flat_max_level: How far the flat region may reach into tissue (see :class:`~medue.protect.em.EMProtector`).
        train_steps: Generator/surrogate updates on the reference set.
        reference_size: Side of the synthetic reference images in pixels.
        random_texts: Random vocabulary texts trained beside the class texts.
        lr: Learning rate of both generator and surrogate (Adam).
        **kwargs: :class:`~medue.protect.base.Protector` arguments (``epsilon``…).
    """

    key = "t2ue"
    looks_like = ("faint noise over the whole image, derived from a text description of each class")
    needs_labels = True

    def __init__(self, *, texts: list[str] | tuple[str, ...] | None = None, tile: int = 8, mask_ratio: float = 0.15,
                 flat_max_level: float = 1.0, train_steps: int = 300, reference_size: int = 32,
                 random_texts: int = 62, lr: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if texts is not None and (isinstance(texts, str) or not all(isinstance(t, str) and t.strip() for t in texts)):
            raise ValueError(f"texts must be a list of non-empty strings, one per class, not {texts!r}")
        for name, value, lowest in (("tile", tile, 2), ("train_steps", train_steps, 1),
                                    ("reference_size", reference_size, 16), ("random_texts", random_texts, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
                raise ValueError(f"{name} must be an integer >= {lowest}, not {value!r}")
        for name, value in (("mask_ratio", mask_ratio), ("flat_max_level", flat_max_level)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], not {value!r}")
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
            raise ValueError(f"lr must be a positive number, not {lr!r}")
        self.texts = None if texts is None else [str(t) for t in texts]
        self.tile, self.mask_ratio, self.flat_max_level = tile, float(mask_ratio), float(flat_max_level)
        self.train_steps, self.reference_size, self.random_texts, self.lr = train_steps, reference_size, random_texts, lr
        self.generator_net: TextNoiseGenerator | None = None
        self.losses: list[float] = []  # min-min loss per step

    def params(self) -> dict[str, Any]:
        return {**super().params(), "texts": self.texts, "tile": self.tile, "mask_ratio": self.mask_ratio,
                "flat_max_level": self.flat_max_level, "train_steps": self.train_steps,
                "reference_size": self.reference_size, "random_texts": self.random_texts, "lr": self.lr}

    def class_texts(self, num_classes: int) -> list[str]:
        texts = list(self.texts or [])
        if self.texts is not None and len(texts) < num_classes:
            raise ValueError(f"t2ue has {len(texts)} text(s) for {num_classes} classes: give one text per class in "
                             "protect.params.texts, in the order of the sorted class names")
        return texts + [f"class {k}" for k in range(len(texts), num_classes)]

    def _patterns(self, texts: list[str], device: torch.device) -> torch.Tensor:
        assert self.generator_net is not None
        emb = torch.stack([embed_text(t) for t in texts]).to(device)
        return self.generator_net.to(device)(emb)

    def fit(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
            generator: torch.Generator, return_delta: bool = True) -> torch.Tensor | None:
        """Train the generator on synthetic reference images; of the release only the number of classes is used."""
        if labels is None:
            raise ValueError("t2ue is class-wise: fit() needs labels (one text per class)")
        num_classes = max(int(labels.max()) + 1, len(self.texts or []), 2)
        class_texts = self.class_texts(num_classes)
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        # small enough for the CPU, and on one thread so that the generator (and every release made from it) is
        # the same for a key on every run
        with single_thread():
            self._fit_generator(class_texts, num_classes, seed, torch.device("cpu"))
        self.fitted = True
        return self.perturb(x_units, labels, space, generator=generator) if return_delta else None

    def _fit_generator(self, class_texts: list[str], num_classes: int, seed: int, device: torch.device) -> None:
        """The min-min loop of :meth:`fit` on synthetic reference images (on ``device``, one thread)."""
        g = torch.Generator().manual_seed(seed)
        words = torch.randint(len(VOCABULARY), (self.random_texts, 4), generator=g).tolist()
        pool = class_texts + [" ".join(VOCABULARY[i] for i in w) for w in words]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.generator_net = TextNoiseGenerator(self.tile)
        embeddings = torch.stack([embed_text(t) for t in pool])
        eps_model = self.epsilon / 255.0  # the reference images are 8-bit-like: [0, 1] spans 255 units
        size = self.reference_size
        surrogate = make_surrogate("small", num_classes, seed=seed, device=device)
        opt_g = torch.optim.Adam(self.generator_net.parameters(), lr=self.lr)
        opt_s = torch.optim.Adam(surrogate.parameters(), lr=self.lr)
        self.losses = []
        for step in range(self.train_steps):
            if step % 100 == 0:  # a fresh surrogate now and then: the patterns must be easy for any new model
                surrogate = make_surrogate("small", num_classes, seed=seed + step, device=device)
                opt_s = torch.optim.Adam(surrogate.parameters(), lr=self.lr)
            chosen = torch.randperm(len(pool), generator=g)[:num_classes]
            if step % 2 == 0:  # half the steps on the class texts themselves
                chosen = torch.arange(num_classes)
            x = reference_images(64, size, g)
            y = torch.randint(num_classes, (64,), generator=g)
            region = flat_region_mask(x, self.mask_ratio, max_level=None)
            patterns = tile_to(self.generator_net(embeddings[chosen]), size, size)
            inp = (x + eps_model * patterns[y] * region).clamp(0, 1)
            loss = F.cross_entropy(surrogate(inp), y)
            opt_s.zero_grad(set_to_none=True)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_s.step()
            opt_g.step()  # both minimise: error-minimising noise (min-min)
            self.losses.append(round(float(loss.detach()), 5))
        self.generator_net.eval()
        for p in self.generator_net.parameters():
            p.requires_grad_(False)

    @property
    def slice_independent(self) -> bool:
        return True  # one generated pattern per class on a per-slice placement

    def fit_uses_pixels(self, labelled: bool) -> bool:
        return False  # the generator learns on synthetic reference images: of the release only the classes count

    @torch.no_grad()
    def perturb(self, x_units: torch.Tensor, labels: torch.Tensor | None, space: UnitSpace, *,
                generator: torch.Generator) -> torch.Tensor:
        self._check_fitted()
        if labels is None:
            raise ValueError("t2ue is class-wise: perturb() needs labels")
        num_classes = max(int(labels.max()) + 1, len(self.texts or []))
        patterns = torch.round(self._patterns(self.class_texts(num_classes), x_units.device) * self.epsilon)
        full = tile_to(patterns, *x_units.shape[-2:])
        level = None if self.flat_max_level >= 1.0 else self.flat_max_level
        region = per_sample_mask(partial(flat_region_mask, max_level=level), x_units, space, self.mask_ratio)
        return project(full[labels] * region, x_units, space, self.epsilon)

    def state_dict(self) -> dict[str, Any]:
        if self.generator_net is None:
            return {}
        return {f"generator.{k}": v for k, v in self.generator_net.state_dict().items()}

    def extra_state(self) -> dict[str, Any]:
        return {"losses": list(self.losses)}

    def load_state(self, state: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        weights = {k[len("generator."):]: v for k, v in state.items() if k.startswith("generator.")}
        if weights:
            self.generator_net = TextNoiseGenerator(self.tile)
            self.generator_net.load_state_dict(weights)
            self.generator_net.eval()
        self.losses = list(extra.get("losses", []))
        self.fitted = True


__all__ = ["EMBED_DIM", "VOCABULARY", "T2UEProtector", "TextNoiseGenerator", "embed_text", "reference_images"]
