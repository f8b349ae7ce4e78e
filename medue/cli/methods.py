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
        protector = cls()
        inert = protector.inert_params()
        params = protector.params()
        print(f"       defaults: { {k: v for k, v in params.items() if k not in inert} }")
        if inert:  # an optimiser's settings when nothing is optimised: settable, without effect as configured
            print(f"       not read with these defaults: {', '.join(k for k in params if k in inert)}")
    from medue.presets import PRESETS

    print("\npresets (protect.preset: NAME sets the method, its parameters and the fidelity budget measured):")
    for preset in PRESETS.values():
        print(f"{preset.name:12s} {preset.method} {preset.params or '(defaults)'} {preset.fidelity}")
        print(f"             {preset.words}; evidence {preset.evidence}")
    return EXIT_OK
