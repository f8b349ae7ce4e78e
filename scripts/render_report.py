"""Open a protection report in headless Chromium, check every picture decoded, and save a screenshot.

    python scripts/render_report.py out/sample-release/release/report.html --screenshot report.png

Exit code 0 when the page rendered with all its images, 1 otherwise (the problems are printed).
Needs ``pip install playwright`` and a system Chromium (``apt-get install chromium``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medue.audit.render import render_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", type=Path, help="report.html written by `medue run`")
    p.add_argument("--screenshot", type=Path, help="save a full-page PNG here")
    p.add_argument("--chromium", help="browser binary (default: chromium on PATH)")
    args = p.parse_args(argv)
    if not args.report.is_file():
        print(f"error: no report at {args.report}; run `medue run <config>` first", file=sys.stderr)
        return 2
    info = render_report(args.report, screenshot=args.screenshot, executable=args.chromium)
    print(json.dumps({k: info[k] for k in ("title", "headings", "page_height", "broken_images", "console_errors",
                                          "ok")}, indent=2))
    print(f"{len(info['images'])} image(s) decoded: " + ", ".join(f"{i['alt']} {i['width']}x{i['height']}"
                                                                  for i in info["images"]))
    return 0 if info["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
