"""``medue init``: a commented config and a labels table for a site's own folder."""

from __future__ import annotations

import argparse

from medue.exit_codes import EXIT_OK


def command(args: argparse.Namespace) -> int:
    from medue.site_init import init_site

    done = init_site(args.folder, config=args.config, labels=args.labels, output=args.output, force=args.force)
    print(f"wrote {done.config}")
    print(f"wrote {done.labels}: {done.items} item(s)"
          + (f", classes from sub-folders: {', '.join(done.classes)}" if done.classes else
             f", {done.unlabelled} label(s) to fill in"))
    print(f"next: set MEDUE_KEY, then `medue check {done.config.name}` and `medue run {done.config.name}`")
    return EXIT_OK
