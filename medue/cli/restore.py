"""``medue restore``: the original stored values of a protected item from its private delta."""

from __future__ import annotations

import argparse
import os
import zipfile

from medue.exit_codes import EXIT_OK


def _key(args: argparse.Namespace, problems: list[str]) -> str | None:
    """The site's key to authenticate the delta with, or ``None`` with --unauthenticated (a problem when neither)."""
    if args.unauthenticated:
        return None
    if args.key_file is not None:
        if not args.key_file.is_file():
            problems.append(f"--key-file {args.key_file} not found")
            return None
        return args.key_file.read_text().strip()
    value = os.environ.get("MEDUE_KEY", "")
    if not value:
        problems.append("no key to authenticate the delta: set MEDUE_KEY or give --key-file (the site's key), or pass "
                        "--unauthenticated to restore from an unauthenticated delta")
        return None
    return value


def command(args: argparse.Namespace) -> int:
    from medue.errors import InvalidConfigError
    from medue.io.delta import DeltaAuthenticationError
    from medue.io.itk import is_itk
    from medue.io.nifti import is_nifti
    from medue.io.restore import restore_dicom_series, restore_itk, restore_nifti

    problems: list[str] = []
    single = args.protected.is_file() and (is_nifti(args.protected) or is_itk(args.protected))
    dicom = args.protected.exists() and not single
    if not args.protected.exists():
        problems.append(f"protected item {args.protected} not found; give a protected NIfTI, MHA or NRRD file or the "
                        "folder of a protected DICOM series (under <output>/release/)")
    if not args.delta.is_file():
        problems.append(f"delta file {args.delta} not found; it is under <output>/private/deltas/<item_id>.npz of a "
                        "run with protect.reversible: true")
    if args.out.exists() and args.out.resolve() == args.protected.resolve():
        problems.append(f"{args.out} is the protected input itself; restore into another file or folder")
    elif dicom and args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        problems.append(f"{args.out} exists; a restored DICOM series goes into a new folder")
    elif not dicom and args.out.exists() and (args.out.is_dir() or not args.force):
        problems.append(f"{args.out} exists; " + ("it is a folder: give a file name for the restored image"
                                                  if args.out.is_dir() else "pass --force to overwrite it"))
    elif single and is_itk(args.protected) and not is_itk(args.out):
        problems.append(f"{args.out}: a restored MetaImage/NRRD keeps its format; name it .mha, .mhd, .nrrd or .nhdr")
    elif single and is_nifti(args.protected) and not is_nifti(args.out):
        problems.append(f"{args.out}: a restored NIfTI keeps its format; name it .nii or .nii.gz")
    key = _key(args, problems)
    if problems:
        raise InvalidConfigError(problems, source="restore")
    try:
        if dicom:
            files, changed = restore_dicom_series(args.protected, args.delta, args.out, key=key)
            print(f"restored {len(files)} DICOM file(s) into {args.out} ({changed} voxels changed back)")
        else:
            restore = restore_itk if is_itk(args.protected) else restore_nifti
            changed = restore(args.protected, args.delta, args.out, key=key)
            print(f"restored {args.out} ({changed} voxels changed back)")
    except DeltaAuthenticationError as exc:
        raise InvalidConfigError([f"{args.delta}: {exc}; use the delta the site's run wrote, with the site's key"],
                                 source="restore") from None
    except (zipfile.BadZipFile, EOFError, KeyError, ValueError) as exc:
        raise InvalidConfigError([f"{args.delta}: not a readable medue delta ({type(exc).__name__}); use the "
                                  "file under <output>/private/deltas/ of the run that protected this item"],
                                 source="restore") from None
    if key is None:
        print("note: the delta was not authenticated (--unauthenticated): its fingerprints matched")
    return EXIT_OK


__all__ = ["command"]
