"""prov's entry point: the handlers every run needs, in place before anything
heavy is imported (Ctrl-C during start-up imports is a normal Ctrl-C).

Any exception that is not one of prov's own errors is a bug in prov: it becomes
one paragraph and exit code 70 (EX_SOFTWARE), with the traceback only under
`--debug` (anywhere before a `--`) or PROV_DEBUG=1.
"""

from __future__ import annotations

import os
import sys

from provisioner.errors import EXIT_INTERRUPTED  # a module of constants, no imports

EX_SOFTWARE = 70
EXIT_SIGPIPE = 128 + 13  # what `prov ls | head -1` gives, as for coreutils


def _take_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """argv without `--debug` (only before a `--`: after it, words are a command's)."""
    end = argv.index("--") if "--" in argv else len(argv)
    head = argv[:end]
    return [a for a in head if a != "--debug"] + argv[end:], "--debug" in head


def _command(argv: list[str]) -> str:
    """The subcommand only: its arguments may hold secrets (`-e TOKEN=...`)."""
    words = [a for a in argv if not a.startswith("-")]
    return f"prov {words[0]}" if words else "prov"


def _silence_stdout() -> None:
    """The reader went away: nothing more reaches it, and Python must not
    complain about it at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def internal_error_paragraph(exc: BaseException, command: str) -> str:
    kind = type(exc).__name__
    detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    seen = f"{kind}: {detail}" if detail else kind
    return (
        f"prov hit an internal error while running `{command}`. {seen}. This is a bug "
        "in prov, not in your setup; nothing you did should cause it. Hint: run the same "
        "command again with --debug (or PROV_DEBUG=1) to see the traceback, and report "
        "it with that traceback in prov's issue tracker."
    )


def launch() -> None:
    """`prov`: the user's resident runs it when there is one (provisioner/
    resident.py); else it runs here, and leaves a resident for the next runs."""
    from provisioner import resident

    resident.client(sys.argv)
    try:
        main()
    finally:
        resident.start(os.environ)


def main() -> None:
    """Run the command in sys.argv in this process."""
    argv, debug_flag = _take_debug_flag(sys.argv[1:])
    sys.argv[1:] = argv
    debug = debug_flag or os.environ.get("PROV_DEBUG", "") not in ("", "0")
    try:
        from provisioner import cli

        cli.main()
        sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(EXIT_SIGPIPE)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise
        try:  # a successful run whose reader left before the last flush
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
            sys.exit(EXIT_SIGPIPE)
        raise
    except Exception as exc:
        if debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write("error: " + internal_error_paragraph(exc, _command(argv)) + "\n")
        sys.exit(EX_SOFTWARE)
