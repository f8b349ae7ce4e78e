"""``medue methods``: the protection methods and their parameters."""

from __future__ import annotations

import argparse

from medue.exit_codes import EXIT_OK


def command(_: argparse.Namespace) -> int:
    from medue.protect import PROTECTORS

    for key in PROTECTORS.keys():
        cls = PROTECTORS.get(key)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{key:6s} {cls.__name__:15s} {doc}")
        print(f"       defaults: {cls().params()}")
    from medue.presets import PRESETS

    print("\npresets (protect.preset: NAME sets the method, its parameters and the fidelity budget measured):")
    for preset in PRESETS.values():
        print(f"{preset.name:12s} {preset.method} {preset.params or '(defaults)'} {preset.fidelity}")
        print(f"             {preset.words}; evidence {preset.evidence}")
    return EXIT_OK
