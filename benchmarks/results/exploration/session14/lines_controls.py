"""Screen of control families for verifying the lines setting (session 14): p-values of medue verify's test on
saved models when the controls are (a) lines turned between the class orientations (shipped), (b) lines along
either axis at other periods (2, 4, 5, 6 px) or turned 90 degrees at the release's period.

    MEDUE_KEY=... python benchmarks/results/exploration/session14/lines_controls.py RELEASE MODEL.pt [MODEL.pt ...]
"""
import math
import sys

import torch

import medue.verify as V
from medue.device import derive_seed, make_generator


def axis_family(protector, j):
    gen = make_generator(derive_seed(V.CONTROL_LABEL, "axis", j))
    r = torch.rand(3, generator=gen)
    choices = [(0.0, 2), (0.0, 4), (0.0, 5), (0.0, 6), (math.pi / 2, 2), (math.pi / 2, 3), (math.pi / 2, 4),
               (math.pi / 2, 5), (math.pi / 2, 6)]
    offset, period = choices[j % len(choices)]
    return V._TurnedLines(protector, offset, float(r[2]), period)


if __name__ == "__main__":
    release, models = sys.argv[1], sys.argv[2:]
    import os
    key = os.environ["MEDUE_KEY"]
    shipped = V._setting_control
    for m in models:
        out = []
        for name, fn in (("turned", shipped), ("axis", axis_family)):
            V._setting_control = fn
            r = V.verify(release, m, key)
            out.append(f"{name} p {r.p_value:.3g}")
        V._setting_control = shipped
        print(m.split("/")[-2] + "/" + m.split("/")[-1], "; ".join(out), flush=True)
