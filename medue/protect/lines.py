"""The release default: placed class lines (``lines``), a setting of
:class:`~medue.protect.salm_samplewise.SampleSALMProtector` whose class pattern is placed, not optimised (see the class
docstring and ``benchmarks/results/README.md``). Everything else the sample-wise class can do it does not read:
:meth:`LinesProtector.inert_params` names it, and ``medue methods`` leaves it out of the defaults it shows."""

from __future__ import annotations

from typing import Any

from medue.protect.salm_samplewise import SampleSALMProtector


class LinesProtector(SampleSALMProtector):
    """A placed class pattern: 1-px lines every 3 px, +``epsilon`` units, on the flattest 45 % of each image
    (background first), one line orientation per class, the first class left unchanged; no optimisation.

    Not the paper's method, and all ours: SALM spends its budget on the *most* significant pixels and optimises the
    noise there; this places fixed lines on the *least* significant ones, and its shortcut is "lines mean the
    second class" (a clean image reads as the first). It is the release default because it measured best of every
    candidate on release files (``benchmarks/results/README.md``): it stops training without augmentation and, on
    some seeds, with flip + crop, and nothing that resamples, smooths, quantises or mixes in clean images. Every
    :class:`SampleSALMProtector` parameter can still be set; these are its defaults.
    """

    key = "lines"
    looks_like = ("thin bright lines, one pixel wide every three pixels, in the flattest parts of each image (mostly "
                  "the background around the body), a few stored units bright (at most epsilon); the first class's "
                  "images are left unchanged")
    needs_labels = True  # one pattern per class: without labels every item would be the blank class
    DEFAULTS: dict[str, Any] = {"epsilon": 8, "mode": "classwise", "placement": "flat", "flat_max_level": 1.0,
                                "mask_ratio": 0.45, "tile": 3, "init": "grating", "duty": 0.25, "blank_class": True,
                                "max_rounds": 0, "augment": ["flip", "shift"]}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**self.DEFAULTS, **kwargs})

    def inert_params(self) -> frozenset[str]:
        # labels are required, so no clusters are drawn and no surrogate predicts a class in batches
        return super().inert_params() | {"num_clusters", "batch_size"}


__all__ = ["LinesProtector"]
