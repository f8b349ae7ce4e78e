"""Stable error-minimising noise (SEM): Liu et al., "Stable Unlearnable Example: Enhancing the Robustness of
Unlearnable Examples via Stable Error-Minimizing Noise", AAAI 2024.

The EM min-min loop (:class:`~medue.protect.em.EMProtector`) in which the surrogate and the noise update both see an
extra *random* perturbation of radius ``rho`` (instead of REM's adversarial one), so the noise stays
error-minimising under perturbation. Ours: ``rho`` defaults to ``epsilon // 2`` and is drawn uniformly and rounded
to stored units.
"""

from __future__ import annotations

from medue.protect.em import EMProtector


class SEMProtector(EMProtector):
    """Stable error-minimising noise (Liu et al., AAAI 2024): EM trained under random noise of radius ``rho``."""

    key = "sem"
    rho_default = staticmethod(lambda eps: max(eps // 2, 1))  # type: ignore[assignment]


__all__ = ["SEMProtector"]
