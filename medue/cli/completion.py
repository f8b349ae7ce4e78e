"""``medue completion``: a shell completion script."""

from __future__ import annotations

import argparse

from medue.exit_codes import EXIT_OK


def command(args: argparse.Namespace) -> int:
    """A bash/zsh (bashcompinit) completion script built from the parser itself, so it never goes stale."""
    from medue.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cases = []
    for name, sp in sub.choices.items():
        opts = sorted(o for a in sp._actions for o in a.option_strings)
        cases.append(f'        {name}) opts="{" ".join(opts)}" ;;')
    top = " ".join(sorted(sub.choices)) + " --help --version --verbose --log-json"
    print("\n".join([
        "# medue shell completion: eval \"$(medue completion bash)\"",
        "_medue() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" cmd="${COMP_WORDS[1]}" opts',
        "    if [ \"$COMP_CWORD\" -eq 1 ]; then",
        f'        COMPREPLY=($(compgen -W "{top}" -- "$cur")); return',
        "    fi",
        '    case "$cmd" in',
        *cases,
        '        *) opts="" ;;',
        "    esac",
        '    if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "$opts" -- "$cur"));',
        '    else COMPREPLY=($(compgen -f -- "$cur")); fi',
        "}",
        "complete -o filenames -F _medue medue",
    ]))
    return EXIT_OK
