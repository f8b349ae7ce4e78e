"""``medue report``: the summary and verdict of a finished release's report.json."""

from __future__ import annotations

import argparse
import json

from medue.exit_codes import EXIT_GATE, EXIT_OK, EXIT_PARTIAL


def command(args: argparse.Namespace) -> int:
    """A readable summary of a finished run; exit code as the run's (3 when a gate failed, 4 partial)."""
    path = args.output / "release" / "report.json"
    from medue.errors import InvalidConfigError

    if not path.is_file():
        raise InvalidConfigError([f"no report at {path}; give the output folder of a finished `medue run`"],
                                 source="report")
    try:
        r = json.loads(path.read_text())
    except ValueError:
        raise InvalidConfigError([f"{path} is not a readable report (not JSON); run `medue run` again to rewrite it"],
                                 source="report") from None
    if getattr(args, "json", False):
        print(json.dumps(r, indent=2))
    else:
        s = r["summary"]
        if r.get("verdict_line"):
            print(f"verdict: {r['verdict_line']}")
        print(f"release {r['release']}: method {r['method']}, key fingerprint {r['key_fingerprint']}, "
              f"medue {r['medue_version']}")
        print(f"  items {s['items']}: exported {s['done']}, quarantined {s['quarantined']}, failed the fidelity gate "
              f"{s['gate_failed']}, failed {s['failed']}, files ignored on purpose {s.get('ignored', 0)}"
              + (f", held out for self-evaluation (never released) {s['held_out']}" if s.get("held_out") else ""))
        if r.get("protection"):
            from medue.audit.report import protection_lines

            for line in protection_lines(r["protection"]):
                print(f"  {line}")
        if s["failed"]:
            print(f"  {s['failed']} item(s) FAILED on an error of the run (not of their input; see below): the "
                  "release is incomplete. `medue run CONFIG --resume` retries exactly those items")
        pol = r.get("policies") or {}
        if pol:
            print(f"  policies: de-identification {pol.get('deidentification')}, UIDs {pol.get('uid_mode')}, labels in "
                  f"release {'yes' if pol.get('labels_in_release') else 'no'}, reversible "
                  f"{'yes' if pol.get('reversible') else 'no'}, gate override "
                  + (f"by {pol['fidelity_override'].get('by')}" if pol.get("fidelity_override") else "none"))
        for w in r.get("warnings", []):
            print(f"  warning: {w['item_id']}: {w['warning']}")
        for c in r["conformance"]:
            print(f"  check: {c['check']}: {c['result']}" + (f" ({c['note']})" if c.get("note") else ""))
        v = r.get("efficacy_verdict")
        if v:
            from medue.audit.report import verdict_lines

            for line in verdict_lines(v):
                print("  " + line)
        else:
            print("  efficacy: not measured for this release (no report.efficacy_results)")
        for i in r["items"]:
            f = i.get("fidelity")
            line = f"  {i['item_id']} {i['status']:12s}"
            if f:
                psnr = "identical" if f["psnr_db"] is None else f"{f['psnr_db']:.2f} dB"
                line += (f" PSNR {psnr} SSIM {f['ssim']:.4f} max|d| {f['max_abs_units']} "
                         f"changed {100 * f['fraction_changed']:.1f}%")
                if i.get("unchanged_on_purpose"):
                    line += " (unchanged on purpose: blank class)"
            elif i.get("reason"):
                line += f" [{i['reason']}] {i.get('message', '')[:100]}"
            print(line)
        print(f"HTML: {args.output / 'release' / 'report.html'}")
    s = r["summary"]
    blocked = any(c.get("blocked") for c in r["conformance"])
    if s["gate_failed"] or blocked:
        return EXIT_GATE
    return EXIT_PARTIAL if s["quarantined"] or s["failed"] else EXIT_OK
