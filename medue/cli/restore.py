"""``medue restore``: the original stored values of a protected item from its private delta."""

from __future__ import annotations

import argparse
import zipfile

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
    if args.out.exists() and args.out.resolve() == args.protected.resolve():
        problems.append(f"{args.out} is the protected input itself; restore into another file or folder")
    elif dicom and args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        problems.append(f"{args.out} exists; a restored DICOM series goes into a new folder")
    elif not dicom and args.out.exists() and (args.out.is_dir() or not args.force):
        problems.append(f"{args.out} exists; " + ("it is a folder: give a file name for the restored NIfTI"
                                                  if args.out.is_dir() else "pass --force to overwrite it"))
    if problems:
        raise InvalidConfigError(problems, source="restore")
    try:
        if dicom:
            files, changed = restore_dicom_series(args.protected, args.delta, args.out)
            print(f"restored {len(files)} DICOM file(s) into {args.out} ({changed} voxels changed back)")
        else:
            changed = restore_nifti(args.protected, args.delta, args.out)
            print(f"restored {args.out} ({changed} voxels changed back)")
    except (zipfile.BadZipFile, EOFError, KeyError, ValueError) as exc:
        raise InvalidConfigError([f"{args.delta}: not a readable medue delta ({type(exc).__name__}: {exc}); use the "
                                  "file under <output>/private/deltas/ of the run that protected this item"],
                                 source="restore") from None
    return EXIT_OK
