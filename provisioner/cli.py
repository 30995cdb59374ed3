"""The command line: parse flags, call the library, print, map errors to exit codes.

Only this module prints or exits. Docker and paramiko are imported inside the
commands so `prov --help` stays fast.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer

from provisioner.config import DEFAULT_BASE_IMAGE, DEFAULT_BIND, DEFAULT_TIMEOUT
from provisioner.errors import ProvError

P = ParamSpec("P")
T = TypeVar("T")

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status

app = typer.Typer(
    help="Isolated, SSH-reachable Docker environments for AI coding agents, handed to NTM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rendering it with rich costs ~0.3 s of imports on every --help.
    rich_markup_mode=None,
)


@functools.cache
def _console(stderr: bool) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


class _LazyConsole:
    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr

    def __getattr__(self, attr: str) -> Any:
        return getattr(_console(self._stderr), attr)


err: Console = _LazyConsole(stderr=True)  # type: ignore[assignment]
out: Console = _LazyConsole(stderr=False)  # type: ignore[assignment]


class ConsoleReporter:
    """Progress on stderr: steps as lines, details on a live status line."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._status: Status | None = None

    def __enter__(self) -> ConsoleReporter:
        if not self.quiet and err.is_terminal:
            self._status = err.status("starting")
            self._status.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._status is not None:
            self._status.stop()

    def step(self, message: str) -> None:
        if not self.quiet:
            err.print(f"[bold]•[/] {escape(message)}")
        if self._status is not None:
            self._status.update(escape(message))

    def note(self, message: str) -> None:
        if not self.quiet:
            err.print(f"  {escape(message)}", soft_wrap=True)

    def warn(self, message: str) -> None:
        err.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)

    def detail(self, message: str) -> None:
        if self._status is not None:
            self._status.update(escape(message[:150]))
        if _verbose and not self.quiet:
            err.print(f"  [dim]{escape(message)}[/]", soft_wrap=True)


_verbose = False


def _fail(exc: ProvError) -> NoReturn:
    err.print(f"[red bold]error:[/] {escape(exc.paragraph())}", soft_wrap=True)
    tail = getattr(exc, "log_tail", "")
    if tail:
        err.print("[dim]--- last log lines ---[/]")
        err.print(escape(tail), markup=True)
    raise typer.Exit(exc.exit_code)


def _run(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return fn(*args, **kwargs)
    except ProvError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        err.print("[red bold]interrupted:[/] nothing half-made was left behind.")
        raise typer.Exit(130) from None


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show build and wait details.")
    ] = False,
) -> None:
    global _verbose
    _verbose = verbose


@app.command()
def up(
    name: Annotated[str, typer.Argument(help="Environment name (also the ssh alias prov-NAME).")],
    port: Annotated[
        int | None, typer.Option(help="Host port for SSH (default: a free one from 2222 up).")
    ] = None,
    bind: Annotated[
        str,
        typer.Option(
            help="Address to publish SSH on. Anything but loopback exposes it to other machines."
        ),
    ] = DEFAULT_BIND,
    project: Annotated[
        Path | None,
        typer.Option(
            help="Project dir, mounted at the same path (default: NTM's projects_base/NAME)."
        ),
    ] = None,
    create_dir: Annotated[
        bool, typer.Option("--create-dir", help="Create the project dir if missing.")
    ] = False,
    key: Annotated[
        Path | None,
        typer.Option(
            help="Your own public key (.pub) to authorize instead of a per-environment key."
        ),
    ] = None,
    base_image: Annotated[
        str, typer.Option(help="Debian or Ubuntu base image.")
    ] = DEFAULT_BASE_IMAGE,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for SSH to be ready.")
    ] = DEFAULT_TIMEOUT,
    cc: Annotated[int, typer.Option(help="Claude Code panes in the ntm command.")] = 2,
    cod: Annotated[int, typer.Option(help="Codex panes in the ntm command.")] = 1,
    gmi: Annotated[int, typer.Option(help="Gemini CLI panes in the ntm command.")] = 0,
    ssh_config: Annotated[
        bool,
        typer.Option("--ssh-config/--no-ssh-config", help="Add prov's Include to ~/.ssh/config."),
    ] = True,
    recreate: Annotated[
        bool,
        typer.Option("--recreate", help="Replace a container that differs from what is asked."),
    ] = False,
    spawn: Annotated[bool, typer.Option("--spawn", help="Run the ntm command when ready.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Build or reuse the image, run the environment, wait for SSH, write the alias."""
    from provisioner import service
    from provisioner.config import AgentCounts, UpRequest

    request = _run(
        UpRequest,
        name=name,
        port=port,
        bind=bind,
        project_dir=project,
        create_dir=create_dir,
        key_file=key,
        base_image=base_image,
        timeout=timeout,
        agents=AgentCounts(cc, cod, gmi),
        write_user_ssh_config=ssh_config,
        recreate=recreate,
    )
    with ConsoleReporter(quiet=as_json) as reporter:
        result = _run(service.up, request, reporter)
    if as_json:
        out.print_json(json.dumps(result.public()))
    else:
        verb = {
            "unchanged": "already running",
            "started": "started",
            "created": "ready",
            "recreated": "recreated and ready",
        }[result.action]
        err.print(
            f"[green bold]✓[/] {result.name} {verb} in {result.ready_seconds:.1f} s: "
            f"ssh {result.ssh_alias}  (host key {result.host_key_fingerprint})",
            soft_wrap=True,
        )
        err.print("Hand it to NTM with:")
        out.print(result.ntm_command, soft_wrap=True)
    if spawn:
        from provisioner import handoff

        code = _run(handoff.spawn, result.ntm_argv, result.ntm_env, result.ntm_command)
        raise typer.Exit(code)


@app.command()
def down(name: Annotated[str, typer.Argument(help="Environment name.")]) -> None:
    """Remove the container; keys, host key and ssh alias are kept for the next `up`."""
    from provisioner import service
    from provisioner.config import validate_name

    _run(validate_name, name)
    result = _run(service.down, name)
    if result.removed:
        err.print(f"[green bold]✓[/] removed container prov-{name} (keys and alias kept)")
    else:
        err.print(f"prov-{name} has no container; nothing to remove")


@app.command("ssh-test")
def ssh_test(
    name: Annotated[str, typer.Argument(help="Environment name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Prove a running environment works, step by step, the way NTM uses it."""
    from provisioner import checks
    from provisioner.config import validate_name

    _run(validate_name, name)
    results = _run(checks.ssh_test, name)
    failed = [c for c in results if c.ok is not True]
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "name": name,
                    "ok": not failed,
                    "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in results],
                }
            )
        )
    else:
        for check in results:
            mark = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[dim]skip[/]"}[check.ok]
            detail = " ".join(check.detail.split())
            out.print(f"{mark}  {escape(check.name)}  [dim]{escape(detail)}[/]", soft_wrap=True)
    if failed:
        if not as_json:
            err.print(
                f"[red bold]error:[/] {len([c for c in failed if c.ok is False])} check(s) "
                f"failed for {name}. Hint: `prov up {name}` repairs a stopped or removed "
                "environment; `prov up --recreate` replaces a broken one."
            )
        raise typer.Exit(9)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("[red bold]interrupted[/]")
        sys.exit(130)
