"""``medue restore``: the original stored values of a protected item from its private delta."""

from __future__ import annotations

import argparse

from medue.exit_codes import EXIT_OK


def command(args: argparse.Namespace) -> int:
    from medue.errors import InvalidConfigError
    from medue.io.nifti import is_nifti
    from medue.io.restore import restore_dicom_series, restore_nifti

    problems = []
    dicom = args.protected.is_dir() or (args.protected.is_file() and not is_nifti(args.protected))
    if not args.protected.exists():
        problems.append(f"protected item {args.protected} not found; give a protected NIfTI file or the folder of a "
                        "protected DICOM series (under <output>/release/)")
    if not args.delta.is_file():
        problems.append(f"delta file {args.delta} not found; it is under <output>/private/deltas/<item_id>.npz of a "
                        "run with protect.reversible: true")
    if dicom and args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        problems.append(f"{args.out} exists; a restored DICOM series goes into a new folder")
    if problems:
        raise InvalidConfigError(problems, source="restore")
    if dicom:
        files, changed = restore_dicom_series(args.protected, args.delta, args.out)
        print(f"restored {len(files)} DICOM file(s) into {args.out} ({changed} voxels changed back)")
    else:
        changed = restore_nifti(args.protected, args.delta, args.out)
        print(f"restored {args.out} ({changed} voxels changed back)")
    return EXIT_OK
