"""The command line: parse flags, call the library, print, map errors to exit codes.

Only this module prints or exits. prov's other modules are imported inside the
commands so `prov --help` stays fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, ParamSpec, TextIO, TypeVar

import typer

from provisioner import resident
from provisioner.config import DEFAULT_BASE_IMAGE, DEFAULT_BIND, DEFAULT_TIMEOUT
from provisioner.errors import EXIT_CHECK_FAILED, EXIT_DECLINED, EXIT_INTERRUPTED, ProvError
from provisioner.spec import container_name
from provisioner.sshconf import alias_for

P = ParamSpec("P")
T = TypeVar("T")

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status

    from provisioner import checks
    from provisioner import slots as slots_mod
    from provisioner.config import Containment, Extras, UpRequest
    from provisioner.engine import targets
    from provisioner.injection import Secret

app = typer.Typer(
    help=(
        "Isolated, SSH-reachable Docker environments for AI coding agents, handed to NTM.\n\n"
        "--debug (anywhere, or PROV_DEBUG=1) shows the traceback of an internal error."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rendering it with rich costs ~0.3 s of imports on every --help.
    rich_markup_mode=None,
)


class Stream:
    """One output stream: rich styling on a terminal, plain lines otherwise.

    Plain output never imports rich (~0.1 s), which keeps scripted and --json
    runs fast and their output free of escape codes.
    """

    def __init__(self, name: str) -> None:
        self._name = name  # "stdout" or "stderr", looked up late (tests swap them)

    @property
    def _stream(self) -> TextIO:
        stream: TextIO = getattr(sys, self._name)
        return stream

    @functools.cached_property
    def tty(self) -> bool:
        return self._stream.isatty()

    @functools.cached_property
    def console(self) -> Console:
        from rich.console import Console

        return Console(stderr=self._name == "stderr", highlight=False)

    def line(self, text: str, prefix: str = "", style: str = "") -> None:
        if self.tty:
            from rich.text import Text

            styled = Text.assemble((prefix, style), text) if prefix else Text(text, style=style)
            self.console.print(styled, soft_wrap=True)
        else:
            print(prefix + text, file=self._stream, flush=True)


err = Stream("stderr")
out = Stream("stdout")
_verbose = False


class ConsoleReporter:
    """Progress on stderr: phases as lines, and on a terminal a live status line
    with the current phase, its latest detail and the seconds it has taken."""

    def __init__(self, quiet: bool = False, prefix: str = "") -> None:
        self.quiet = quiet
        self.prefix = prefix  # names the environment when several come up at once
        self._status: Status | None = None
        self._phase = "starting"
        self._detail = ""
        self._since = time.monotonic()
        self._ticker: threading.Event | None = None

    def __enter__(self) -> ConsoleReporter:
        if not self.quiet and err.tty and not self.prefix:
            self._status = err.console.status("starting")
            self._status.start()
            stop = self._ticker = threading.Event()

            def tick() -> None:  # the elapsed seconds move even when nothing is said
                while not stop.wait(0.5):
                    self._refresh()

            threading.Thread(target=tick, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._ticker is not None:
            self._ticker.set()
        if self._status is not None:
            self._status.stop()

    def step(self, message: str) -> None:
        if not self.quiet:
            err.line(self.prefix + message, "• ", "bold")
        self._phase, self._detail, self._since = message, "", time.monotonic()
        self._refresh()

    def _refresh(self) -> None:
        if self._status is None:
            return
        from rich.text import Text

        elapsed = time.monotonic() - self._since
        text = f"{self._phase} ({elapsed:.0f} s)" + (f": {self._detail}" if self._detail else "")
        self._status.update(Text(text[:150]))

    def note(self, message: str) -> None:
        if not self.quiet:
            err.line(self.prefix + message, "  ")

    def warn(self, message: str) -> None:
        err.line(self.prefix + message, "warning: ", "yellow")

    def detail(self, message: str) -> None:
        self._detail = message
        self._refresh()
        if _verbose and not self.quiet:
            err.line(self.prefix + message, "  ", "dim")


_IMPORTED = time.monotonic()


def since_start() -> float:
    """Seconds since this process started (the kernel's start time, so Python's
    own start-up counts too), as a stopwatch around the command would see it;
    from the import of this module where /proc does not say."""
    try:
        with open("/proc/self/stat", "rb") as handle:  # noqa: PTH123 - a proc file, read once
            fields = handle.read().rsplit(b")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic() - _IMPORTED


def _fail(exc: ProvError) -> NoReturn:
    err.line(exc.paragraph(), "error: ", "bold red")
    if exc.log_tail:
        err.line("--- last log lines ---", style="dim")
        err.line(exc.log_tail)
    raise typer.Exit(exc.exit_code)


def _print_json(data: dict[str, object] | list[dict[str, object]]) -> None:
    print(json.dumps(data, indent=2), flush=True)


def _run(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return fn(*args, **kwargs)
    except ProvError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        err.line("nothing half-made was left behind.", "interrupted: ", "bold red")
        raise typer.Exit(EXIT_INTERRUPTED) from None


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show build and wait details.")
    ] = False,
    docker_host: Annotated[
        str | None,
        typer.Option(
            "--docker-host",
            help="The Docker engine (unix:///path, tcp://, ssh://); otherwise DOCKER_HOST, "
            "DOCKER_CONTEXT, the current docker context, then the local socket.",
        ),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option("--engine", help="An engine added with `prov engine add NAME HOST`."),
    ] = None,
) -> None:
    global _verbose
    _verbose = verbose
    _engine_flags(docker_host, engine)


_flags: dict[str, str | None] = {"docker_host": None, "engine": None}  # as parsed


def _engine_flags(docker_host: str | None, engine: str | None) -> None:
    """--docker-host and --engine, given before the command or to `up` (which
    outranks the one before)."""
    if docker_host is not None:
        _flags["docker_host"] = docker_host
    if engine is not None:
        _flags["engine"] = engine


def _asked() -> targets.Asked:
    """The engine this command was asked for, the value passed down."""
    from provisioner.engine import targets

    return targets.Asked.of(_flags["docker_host"], _flags["engine"])


@app.command()
def up(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Environment name(s), also the ssh alias prov-NAME; several come up at once."
        ),
    ] = None,
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
    agents: Annotated[
        str,
        typer.Option(
            envvar="PROV_AGENTS",
            help="Agent CLIs in the image: a subset of claude,codex,gemini, or none.",
        ),
    ] = "claude,codex,gemini",
    agent_version: Annotated[
        list[str] | None,
        typer.Option("--agent-version", help="AGENT=VERSION to pin another version (repeatable)."),
    ] = None,
    ca_cert: Annotated[
        list[Path] | None,
        typer.Option(
            "--ca-cert",
            help="Extra CA certificate to trust in the image "
            "(repeatable; the host's own extra CAs are added already).",
        ),
    ] = None,
    from_image: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Your project image (Debian/Ubuntu based) to add prov's SSH and agent layers to.",
        ),
    ] = None,
    dockerfile: Annotated[
        Path | None,
        typer.Option(
            help="Project Dockerfile layered on top (default: PROJECT/.prov/Dockerfile if present)."
        ),
    ] = None,
    devcontainer: Annotated[
        Path | None,
        typer.Option(
            help="devcontainer.json to use (default: the project's .devcontainer/"
            "devcontainer.json or .devcontainer.json, if present)."
        ),
    ] = None,
    no_devcontainer: Annotated[
        bool,
        typer.Option("--no-devcontainer", help="Ignore the project's devcontainer.json."),
    ] = False,
    gpus: Annotated[str | None, typer.Option(help="GPUs for the container: all or N.")] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env", "-e", help="KEY=VALUE (or KEY from here) for agent sessions (repeatable)."
        ),
    ] = None,
    env_file: Annotated[Path | None, typer.Option(help="File of KEY=VALUE lines.")] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option(
            "--secret",
            help="NAME=VALUE@HOST[:HEADER]: the proxy puts VALUE into HEADER (default "
            "Authorization: Bearer) of requests to HOST; inside, $NAME is a placeholder "
            "(repeatable; kept for the next up).",
        ),
    ] = None,
    secret_file: Annotated[
        Path | None, typer.Option(help="File of NAME=VALUE@HOST[:HEADER] lines.")
    ] = None,
    drop_secret: Annotated[
        list[str] | None,
        typer.Option("--drop-secret", help="Forget the secret NAME (repeatable)."),
    ] = None,
    mount: Annotated[
        list[str] | None,
        typer.Option("--mount", help="Extra bind mount SRC:DST[:ro] (repeatable)."),
    ] = None,
    credentials: Annotated[
        str | None,
        typer.Option(
            help="Agent logins: tokens (the login files only, shared; the default here), "
            "copy (a private copy of the agents' dirs), mount (the dirs themselves: the "
            "agent can write what the host's CLIs run) or none (the default on a remote "
            "engine)."
        ),
    ] = None,
    clone: Annotated[
        bool,
        typer.Option(
            "--clone",
            help="Branch mode: the agent works in a clone of its own on branch prov/NAME "
            "(the host's tree is never written); `git fetch prov-NAME` brings its commits.",
        ),
    ] = False,
    branch: Annotated[
        str | None,
        typer.Option(help="Branch mode on this branch (implies --clone)."),
    ] = None,
    protect_paths: Annotated[
        list[str] | None,
        typer.Option(
            "--protect",
            help="Another project path the host runs, read-only inside (repeatable; "
            "a trailing / for a directory).",
        ),
    ] = None,
    sync: Annotated[
        str | None,
        typer.Option(
            help="Remote engines: how the project gets there. rsync (default: pushed at "
            "up, `prov sync` moves changes) or none (the same path exists there).",
        ),
    ] = None,
    sudo: Annotated[
        bool,
        typer.Option(
            "--sudo",
            help="Give the agent passwordless sudo (root in the container). Off by default.",
        ),
    ] = False,
    egress: Annotated[
        str,
        typer.Option(
            help="Outbound network: allowlist (only allowed domains, through prov's proxy), "
            "open, or none."
        ),
    ] = "allowlist",
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", help="Domain the agent may reach in allowlist mode (repeatable)."),
    ] = None,
    allow_net: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-net",
            help="Address range (CIDR) the proxy may reach although it is private, loopback "
            "or link-local, e.g. an internal mirror's (repeatable; refused by default).",
        ),
    ] = None,
    pids_limit: Annotated[
        int, typer.Option(help="Most processes the environment may run at once.")
    ] = 4096,
    memory: Annotated[
        str | None,
        typer.Option(
            help="Memory limit, e.g. 8g, or none (default: half the engine host's memory)."
        ),
    ] = None,
    disk: Annotated[
        str | None,
        typer.Option(
            help="Size of the agent's home, a file system of its own, e.g. 20g, or none "
            "(default: a quarter of the engine host's free space, at most 64g).",
        ),
    ] = None,
    cpus: Annotated[
        str | None,
        typer.Option(
            help="CPU limit, e.g. 2 or 0.5, or none (default: half the engine host's CPUs, "
            "at least 1)."
        ),
    ] = None,
    allow_unsafe_mount: Annotated[
        bool,
        typer.Option(
            "--allow-unsafe-mount",
            help="Mount a project or --mount source prov refuses (home, system dirs, "
            "sockets); never PROV_HOME.",
        ),
    ] = False,
    forward_agent: Annotated[
        bool,
        typer.Option(
            "--forward-agent",
            help="Let sessions use your ssh-agent (alias and sshd): while you are "
            "connected, the agent inside can sign with all of its keys.",
        ),
    ] = False,
    engine: Annotated[
        str | None,
        typer.Option(
            "--engine",
            help="Run on an engine added with `prov engine add`, or `auto`: the named "
            "engine with the most free memory (several names are spread).",
        ),
    ] = None,
    docker_host: Annotated[
        str | None,
        typer.Option("--docker-host", help="Run on this engine (unix://, tcp://, ssh://)."),
    ] = None,
    prepare_slots: Annotated[
        int | None,
        typer.Option(
            "--prepare",
            min=0,
            max=32,
            help="Keep N slots ready from now on (egress proxies made before their "
            "environments, ~10 MB each; 0: none) and make them now. Names are optional.",
        ),
    ] = None,
) -> None:
    """Build or reuse the image, run the environment, wait for SSH, write the alias.

    Re-running it is safe: a running, unchanged environment is only re-verified, a
    stopped one is started, a removed one is recreated with the same keys."""
    from provisioner.config import AgentCounts, UpRequest

    _engine_flags(docker_host, engine)
    if prepare_slots is not None:
        _prepare_slots(prepare_slots, base_image, as_json and not names)
    if not names and prepare_slots is not None:
        return
    _check_names(
        names or [],
        {"--port": port, "--project": project, "--spawn": spawn or None, "--branch": branch},
    )
    extras = _run(
        _extras,
        agents,
        agent_version or [],
        ca_cert or [],
        from_image,
        dockerfile,
        gpus,
        env or [],
        env_file,
        mount or [],
        credentials,
        sync,
        protect_paths or [],
    )
    extras = _run(
        _extras_more,
        extras,
        branch=branch or "" if branch is not None or clone else None,
        devcontainer=devcontainer,
        no_devcontainer=no_devcontainer,
        secrets=(secret or [], secret_file, drop_secret or []),
    )
    containment = _run(
        _containment,
        sudo,
        egress,
        allow or [],
        pids_limit,
        memory,
        cpus,
        allow_unsafe_mount,
        forward_agent,
        allow_net or [],
        disk,
    )
    requests = [
        _run(
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
            extras=extras,
            containment=containment,
        )
        for name in dict.fromkeys(names or [])  # `prov up x x` brings x up once
    ]
    if len(requests) > 1:
        _up_many(requests, as_json)
        return
    _up_one(requests[0], as_json, spawn)


def _extras(
    agents: str,
    agent_versions: list[str],
    ca_certs: list[Path],
    from_image: str | None,
    dockerfile: Path | None,
    gpus: str | None,
    env: list[str],
    env_file: Path | None,
    mounts: list[str],
    credentials: str | None,
    sync: str | None = None,
    protect_paths: list[str] | None = None,
) -> Extras:
    from provisioner import config

    return config.Extras(
        agents=config.parse_agents(agents),
        agent_versions=tuple(config.parse_agent_versions(agent_versions).items()),
        ca_certs=tuple(p.expanduser().absolute() for p in ca_certs),
        from_image=from_image,
        dockerfile=dockerfile.expanduser().absolute() if dockerfile else None,
        gpus=config.parse_gpus(gpus) if gpus is not None else None,
        env=config.parse_env(env, env_file),
        mounts=tuple(config.parse_mount(m) for m in mounts),
        credentials=config.credentials_mode(credentials),
        sync=config.sync_mode(sync),
        protect=tuple(protect_paths or ()),
    )


def _check_names(names: list[str], single: dict[str, object]) -> None:
    """A NAME is needed; flags about one environment take exactly one."""
    from provisioner.errors import UsageError

    if not names:
        _fail(
            UsageError(
                "prov up needs an environment name",
                "No NAME was given (and no --prepare N).",
                "run `prov up NAME` (several names bring several up at once).",
            )
        )
    if len(names) > 1:
        for flag, value in single.items():
            if value is not None:
                _fail(
                    UsageError(
                        f"{flag} applies to one environment, not {len(names)}",
                        f"Asked to bring up {', '.join(names)}.",
                        f"run `prov up NAME {flag} ...` for each one instead.",
                    )
                )


def _extras_more(
    extras: Extras,
    branch: str | None,
    devcontainer: Path | None,
    no_devcontainer: bool,
    secrets: tuple[list[str], Path | None, list[str]],
) -> Extras:
    """Branch mode ("": prov/NAME, per environment), devcontainer.json and secrets."""
    from dataclasses import replace

    from provisioner.errors import UsageError

    if devcontainer is not None and no_devcontainer:
        raise UsageError(
            "--devcontainer and --no-devcontainer ask for opposite things", "", "pass one of them."
        )
    if branch is not None:
        extras = replace(extras, branch=branch)
    if devcontainer is not None or no_devcontainer:
        extras = replace(
            extras,
            devcontainer=devcontainer.expanduser().absolute() if devcontainer else None,
            no_devcontainer=no_devcontainer,
        )
    items, file, drop = secrets
    if items or file or drop:
        extras = replace(extras, secrets=_secrets(items, file), drop_secrets=tuple(drop))
    return extras


def _secrets(items: list[str], file: Path | None) -> tuple[Secret, ...]:
    from provisioner import injection
    from provisioner.fsutil import read_user_file

    found = []
    if file is not None:
        found += injection.parse_secret_file(read_user_file(file, "--secret-file"), str(file))
    found += [injection.parse_secret(item) for item in items]
    return tuple(found)


def _containment(
    sudo: bool,
    egress: str,
    allow: list[str],
    pids_limit: int,
    memory: str | None,
    cpus: str | None,
    allow_unsafe_mount: bool,
    forward_agent: bool = False,
    allow_nets: list[str] | None = None,
    disk: str | None = None,
) -> Containment:
    from provisioner import config

    return config.Containment(
        sudo=sudo,
        pids_limit=pids_limit,
        memory=config.parse_memory(memory) if memory is not None else None,
        cpus=config.parse_cpus(cpus) if cpus is not None else None,
        disk=config.parse_disk(disk) if disk is not None else None,
        egress=config.egress_mode(egress),
        allow=tuple(config.parse_domain(d) for d in allow),
        allow_nets=tuple(config.parse_net(n) for n in allow_nets or ()),
        allow_unsafe_mount=allow_unsafe_mount,
        forward_agent=forward_agent,
    )


def _up_many(requests: list[UpRequest], as_json: bool) -> None:
    """Bring several environments up concurrently; report each; fail if any failed."""
    from provisioner import service

    items = [(r, ConsoleReporter(quiet=as_json, prefix=f"[{r.name}] ")) for r in requests]
    outcomes = _run(service.up_many, items, None, _asked())
    failures = [(r, o) for r, o in zip(requests, outcomes, strict=True) if isinstance(o, ProvError)]
    if as_json:
        _print_json(
            [
                o.public()
                if not isinstance(o, ProvError)
                else {"name": r.name, "error": o.paragraph()}
                for r, o in zip(requests, outcomes, strict=True)
            ]
        )
    else:
        for outcome in outcomes:
            if not isinstance(outcome, ProvError):
                err.line(f"{outcome.name} ready: ssh {outcome.ssh_alias}", "✓ ", "bold green")
                if outcome.limits:
                    err.line(f"limits: {outcome.limits}; disk: {outcome.disk}", "  ")
                out.line(outcome.ntm_command)
        ready_count = len(outcomes) - len(failures)
        err.line(f"{ready_count} of {len(outcomes)} ready in {since_start():.1f} s")
    for request, failure in failures:
        err.line(f"{request.name}: {failure.paragraph()}", "error: ", "bold red")
    if failures:
        raise typer.Exit(failures[0][1].exit_code)


def _up_one(request: UpRequest, as_json: bool, spawn: bool) -> None:
    from provisioner import service

    with ConsoleReporter(quiet=as_json) as reporter:
        result = _run(service.up, request, reporter, None, _asked())
    if as_json:
        _print_json(result.public())
    else:
        verb = {
            "unchanged": "already running",
            "started": "started",
            "created": "ready",
            "recreated": "recreated and ready",
        }[result.action]
        built = f", {result.image_seconds:.1f} s of it the image" if result.image_seconds else ""
        err.line(
            f"{result.name} {verb} in {since_start():.1f} s{built}: ssh {result.ssh_alias}  "
            f"(host key {result.host_key_fingerprint})",
            "✓ ",
            "bold green",
        )
        if result.limits:
            err.line(f"limits: {result.limits}; disk: {result.disk}", "  ")
        if result.guide_command:
            where = f" on the engine host ({result.published_on})" if result.published_on else ""
            err.line(
                f"SSH is also on {result.published_bind}:{result.published_port}{where}: "
                + result.guide_command
            )
        err.line("Hand it to NTM with:")
        out.line(result.ntm_command)
    if spawn:
        from provisioner import handoff

        argv, env = _run(handoff.spawn_command, result.ntm_argv, result.ntm_env, result.ntm_command)
        _exec(argv, env)


@app.command()
def down(
    name: Annotated[str, typer.Argument(help="Environment name.")], yes: YesOpt = False
) -> None:
    """Remove the container; keys, host key and ssh alias are kept for the next `up`.
    Ends every tmux session inside (and its agents): asks first, or needs --yes."""
    from provisioner import lifecycle

    _confirm_ending_sessions(_name(name), "down", yes)
    result = _run(lifecycle.down, name, asked=_asked())
    if result.removed:
        err.line(f"removed container prov-{name} (keys and alias kept)", "✓ ", "bold green")
        if result.placeholders:
            err.line("removed the empty placeholders: " + ", ".join(result.placeholders), "  ")
    else:
        err.line(f"{container_name(name)} has no container; nothing to remove")


@app.command()
def sync(
    name: Annotated[str, typer.Argument(help="Environment name.")],
    back: Annotated[
        bool, typer.Option("--back", help="Bring the environment's changes here instead.")
    ] = False,
    delete: Annotated[
        bool,
        typer.Option("--delete", help="Also delete files the other side no longer has (a mirror)."),
    ] = False,
) -> None:
    """Move project changes between this machine and an environment on a remote
    engine (rsync through its alias). A newer file on the receiving side is
    never overwritten, and nothing is deleted without --delete."""
    from provisioner import lifecycle

    summary = _run(lifecycle.sync_project, _name(name), back, delete, asked=_asked())
    direction = f"from prov-{name}" if back else f"to prov-{name}"
    err.line(f"synced {direction}: {summary}", "✓ ", "bold green")


@app.command("ssh-test")
def ssh_test(
    name: Annotated[
        str | None,
        typer.Argument(help="Environment name (default: every environment of this PROV_HOME)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Prove environments work, step by step, the way NTM uses them: one, or
    with no name every one with a container (a block each and a summary)."""
    from provisioner import checks

    names, skipped = _run(checks.chosen, _name(name) if name is not None else None, asked=_asked())
    if skipped and not as_json:
        err.line("no container, not tested: " + ", ".join(skipped))
    if not names:
        err.line("no environments with a container; create one with `prov up NAME`")
        return
    reports = [_ssh_test_one(n, as_json, len(names) > 1) for n in names]
    passed = all(r.ok for r in reports)
    if as_json:
        _print_json(reports[0].public() if name is not None else [r.public() for r in reports])
    elif len(names) > 1:
        err.line(
            checks.summary(reports), "✓ " if passed else "", "bold green" if passed else "bold red"
        )
    if not passed:
        from provisioner.errors import CheckFailed

        raise typer.Exit(CheckFailed.exit_code)


def _ssh_test_one(name: str, as_json: bool, heading: bool) -> checks.Report:
    from provisioner import checks

    result = _run(checks.report, name, asked=_asked())
    if not as_json:
        if heading:
            out.line(name, "== ", "bold")
        for check in result.checks:
            mark, style = {True: ("pass", "green"), False: ("FAIL", "red"), None: ("skip", "dim")}[
                check.ok
            ]
            detail = " ".join(check.detail.split())
            out.line(f"{check.name}  ({detail})", f"{mark}  ", style)
        if not result.ok:
            err.line(
                f"{result.failed} check(s) failed for {name}. "
                f"Hint: `prov up {name}` repairs a stopped or removed environment; "
                "`prov up --recreate` replaces a broken one.",
                "error: ",
                "bold red",
            )
    return result


def _name(name: str) -> str:
    from provisioner.config import validate_name

    return _run(validate_name, name)


NameArg = Annotated[str, typer.Argument(help="Environment name.")]
YesOpt = Annotated[
    bool,
    typer.Option(
        "--yes", "-y", help="Do not ask, even when live tmux sessions (running agents) will end."
    ),
]


def _confirm_ending_sessions(name: str, verb: str, yes: bool) -> None:
    """`verb` ends every tmux session in the environment (and the agents in
    them): name them, ask on a terminal, and require --yes without one."""
    from provisioner import lifecycle
    from provisioner.errors import UsageError

    sessions = _run(lifecycle.live_sessions, name, asked=_asked())
    if not sessions or yes:
        return
    listed = ", ".join(f"{s.name} ({s.windows} window{'s' * (s.windows != 1)})" for s in sessions)
    if not sys.stdin.isatty():
        _fail(
            UsageError(
                f"{container_name(name)} has live tmux sessions, which `prov {verb}` would end",
                f"Running now: {listed}. Their agents would be killed mid-task.",
                f"stop them first (`ntm kill` or `tmux kill-session`), or run "
                f"`prov {verb} {name} --yes` to end them.",
            )
        )
    err.line(
        f"prov {verb} ends these tmux sessions and their agents: {listed}", "warning: ", "yellow"
    )
    if not typer.confirm(f"{verb.capitalize()} {name}?", default=False):
        raise typer.Exit(EXIT_DECLINED)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.command("ls")
def ls(
    as_json: JsonOpt = False,
    everyone: Annotated[
        bool,
        typer.Option("--all", help="Also list other PROV_HOMEs' environments (marked)."),
    ] = False,
) -> None:
    """List environments: name, state, port, project, egress, sudo, memory in use of
    its limit, home in use of its file system, agents, uptime."""
    from provisioner import lifecycle

    envs = _run(lifecycle.list_envs, None, everyone, asked=_asked())
    if as_json:
        _print_json([env.public() for env in envs])
        return
    if not envs:
        err.line("no environments; create one with `prov up NAME`")
        return
    shown = lifecycle.engine_heading(envs)
    if shown:
        err.line(f"engine: {shown}")
    rows: list[tuple[str, ...]] = [
        (
            e.name if e.home == "this" else f"{e.name} (other home)",
            e.state,
            f"{e.host}:{e.port}" if e.port else "-",
            e.published,
            e.project_dir,
            e.egress,
            e.sudo,
            e.memory,
            e.home_disk,
            e.agents,
            e.status,
        )
        for e in envs
    ]
    headers: tuple[str, ...] = (
        "NAME", "STATE", "SSH", "PORT", "PROJECT", "EGRESS", "SUDO", "MEMORY", "HOME",
        "AGENTS", "STATUS",
    )  # fmt: skip
    if any(e.branch != "-" for e in envs):  # branch mode: the clone's branch, commits ahead
        headers = (*headers[:5], "BRANCH", *headers[5:])
        rows = [(*row[:5], e.branch, *row[5:]) for row, e in zip(rows, envs, strict=True)]
    if out.tty:
        from rich.table import Table

        table = Table(*headers, box=None, pad_edge=False)
        for row in rows:
            table.add_row(*row)
        out.console.print(table)
        return
    widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(len(headers))]
    lines: list[tuple[str, ...]] = [headers, *rows]
    for row in lines:
        out.line(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@app.command()
def status(name: NameArg, as_json: JsonOpt = False) -> None:
    """Show one environment in detail."""
    from provisioner import lifecycle

    env = _run(lifecycle.status, _name(name), asked=_asked())
    if as_json:
        _print_json(env.public())
        return
    for key, value in env.public().items():
        out.line(f"{key:22} {value}")


def _prepare_slots(count: int, base_image: str, as_json: bool) -> None:
    from provisioner import slots
    from provisioner.config import ProvPaths

    report = _run(
        slots.prepare,
        count,
        base_image,
        lambda text: err.line(text, "• "),
        ProvPaths.from_env(),
        _asked(),
    )
    if as_json:
        _print_json(report.public())
    else:
        _show_slots(report)


def _show_slots(report: slots_mod.SlotsReport) -> None:
    if not report.usable:
        err.line(f"slots: none ({report.note})")
        return
    each = max(report.memory) if report.memory else 0
    err.line(
        f"slots: {len(report.ready)} ready of {report.wanted} wanted ({report.wanted_source})"
        + (f", at most {_size(each)} of memory each" if report.memory else "")
        + f"; {report.claimed} in use as environments' proxies",
        "✓ " if len(report.ready) >= report.wanted else "",
    )
    err.line("set the number with `prov up --prepare N` (0: none) or PROV_SLOTS=N")


@app.command("slots")
def slots_(as_json: JsonOpt = False) -> None:
    """Show the slots kept ready for the next `up`s: egress proxies made before
    their environments, allowing nothing until one is claimed."""
    from provisioner import slots
    from provisioner.config import ProvPaths
    from provisioner.engine import Engine, targets

    engine = _run(lambda: Engine.connect(targets.resolve(_asked())))
    report = _run(slots.report, engine, ProvPaths.from_env())
    if as_json:
        _print_json(report.public())
    else:
        _show_slots(report)


@app.command()
def gc(
    images: Annotated[
        list[str] | None,
        typer.Argument(help="Only these images (prov-env:TAG or ID); default: all of prov's."),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Remove them (default: only show them).")
    ] = False,
) -> None:
    """Show (or with --yes remove) prov's images that no container uses. Images
    come back on the next `up` that needs them (rebuilt; the agent layer takes
    minutes)."""
    from provisioner import lifecycle

    report = _run(lifecycle.gc, yes, tuple(images or ()), asked=_asked())
    for image in report.removable:
        verb = "removed" if report.removed else "would remove"
        out.line(f"{verb} {image.shown}  ({_size(image.frees)})")
    if report.in_use:
        err.line(f"kept, in use: {len(report.in_use)} image(s)")
    if report.slots:
        verb = "removed" if report.removed else "would remove"
        err.line(
            f"{verb} {report.slots} ready slot(s) of this PROV_HOME (the next `up` remakes them)"
        )
    for network in report.networks:
        verb = "removed" if report.removed else "would remove"
        err.line(f"{verb} network {network}, an older prov's outside network no container uses")
    if not report.removable:
        err.line("nothing to remove: every prov image is in use")
    elif report.removed:
        err.line(f"removed; freed at least {_size(report.frees)}", "✓ ", "bold green")
    else:
        err.line(
            f"{len(report.removable)} image(s), at least {_size(report.frees)} to free "
            "(layers they share with each other come free too); "
            "run `prov gc --yes` to remove them"
        )


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


engine_app = typer.Typer(help="Named Docker engines: add, list, remove.", no_args_is_help=True)
app.add_typer(engine_app, name="engine")


@engine_app.command("add")
def engine_add(
    name: Annotated[str, typer.Argument(help="A name for it (used with --engine).")],
    host: Annotated[str, typer.Argument(help="unix:///path, tcp://HOST:PORT or ssh://[USER@]HOST")],
) -> None:
    """Remember an engine under a name (in ~/.config/prov/engines.toml)."""
    from provisioner.engine import targets

    _run(targets.add_named, name, host)
    err.line(f"added engine {name}: {host}", "✓ ", "bold green")


@engine_app.command("rm")
def engine_rm(name: Annotated[str, typer.Argument(help="The engine's name.")]) -> None:
    """Forget a named engine (its environments are not touched)."""
    from provisioner.engine import targets

    _run(targets.remove_named, name)
    err.line(f"removed engine {name}", "✓ ", "bold green")


@engine_app.command("ls")
def engine_ls(as_json: JsonOpt = False) -> None:
    """Every named engine and the default one: reachable, version, CPUs, memory
    (total and free), and this PROV_HOME's environments on it."""
    from provisioner import lifecycle

    reports = _run(lifecycle.engine_reports)
    if as_json:
        _print_json([r.public() for r in reports])
        return
    for r in reports:
        if not r.reachable:
            out.line(f"{r.name}  {r.host}  unreachable: {' '.join(r.detail.split())[:200]}")
            continue
        size = f"{r.cpus or '?'} CPUs, {_size(r.memory or 0)} memory"
        if r.available is not None:
            size += f" ({_size(r.available)} free)"
        out.line(f"{r.name}  {r.host}  {r.detail}, {size}, {r.environments} environment(s)")


@app.command("egress")
def egress_(name: NameArg, as_json: JsonOpt = False) -> None:
    """Show what the environment may reach, what its egress proxy refused lately,
    and the secrets it injects (names and hosts, never values)."""
    from provisioner import lifecycle

    report = _run(lifecycle.egress_report, _name(name), asked=_asked())
    if as_json:
        _print_json(report.public())
        return
    if report.mode == "open":
        out.line(f"{name}: egress open (no restriction)")
    elif report.mode == "none":
        out.line(f"{name}: egress none (no network beyond this machine's SSH)")
    else:
        out.line(f"{name}: egress allowlist; allowed (with subdomains):")
        for domain in report.allowed:
            out.line(f"  {domain}")
        if report.allowed_nets:
            out.line(
                "private addresses it may reach (--allow-net): " + ", ".join(report.allowed_nets)
            )
        out.line("requests let through lately, per host:")
        for host_name, count in report.requests.items():
            out.line(f"  {count:6}  {host_name}")
        if not report.requests:
            out.line("  none")
        out.line(f"recent refusals ({len(report.denials)}):")
        for line in report.denials[-50:]:
            out.line(f"  {line}")
        out.line(f"latest requests ({len(report.recent)}):")
        for line in report.recent:
            out.line(f"  {line}")
        if report.secrets:
            out.line("secrets the proxy injects (a placeholder inside; requests served lately):")
            for s in report.secrets:
                out.line(f"  {s.name}  {s.host}  {s.header}  {s.requests}")


@app.command()
def stop(name: NameArg, yes: YesOpt = False) -> None:
    """Stop the container (it keeps its port, keys and files). Ends every tmux
    session inside (and its agents): asks first, or needs --yes."""
    from provisioner import lifecycle

    _confirm_ending_sessions(_name(name), "stop", yes)
    if _run(lifecycle.stop, name, asked=_asked()):
        err.line(f"stopped prov-{name}", "✓ ", "bold green")
    else:
        err.line(f"{container_name(name)} was not running")


def _start(name: str, timeout: float, restart: bool) -> None:
    from provisioner import lifecycle

    with ConsoleReporter() as reporter:
        _run(lifecycle.start, _name(name), reporter, timeout, restart, asked=_asked())
    err.line(f"{name} ready in {since_start():.1f} s: ssh prov-{name}", "✓ ", "bold green")


TimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait for SSH to be ready.")]


@app.command()
def start(name: NameArg, timeout: TimeoutOpt = DEFAULT_TIMEOUT) -> None:
    """Start a stopped environment and wait until SSH works."""
    _start(name, timeout, restart=False)


@app.command()
def restart(name: NameArg, timeout: TimeoutOpt = DEFAULT_TIMEOUT, yes: YesOpt = False) -> None:
    """Restart the container and wait until SSH works. Ends every tmux session
    inside (and its agents): asks first, or needs --yes."""
    _confirm_ending_sessions(_name(name), "restart", yes)
    _start(name, timeout, restart=True)


@app.command()
def logs(
    name: NameArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming.")] = False,
    tail: Annotated[int | None, typer.Option(help="Only the last N lines.")] = None,
) -> None:
    """Show the container's log (sshd and the entrypoint)."""
    from provisioner import lifecycle

    stream = _run(lifecycle.logs, _name(name), follow, tail, asked=_asked())
    try:
        for chunk in stream:
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
    except ProvError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command()
def rm(
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    forget: Annotated[
        bool,
        typer.Option(
            "--forget",
            help="Its engine is gone for good: remove only what prov keeps here (keys, alias, "
            "record), and leave whatever may be left on that engine.",
        ),
    ] = False,
) -> None:
    """Remove the environment for good: container, keys, host key, alias, known_hosts pin."""
    from provisioner import lifecycle
    from provisioner.errors import UsageError

    _name(name)
    if forget:
        if not yes and not sys.stdin.isatty():
            _fail(
                UsageError(
                    f"Refusing to forget {name!r} without confirmation",
                    "There is no terminal to ask on.",
                    f"run `prov rm {name} --forget --yes`.",
                )
            )
        if not yes and not typer.confirm(
            f"Forget {name} here (keys, alias, record), without touching its engine?",
            default=False,
        ):
            raise typer.Exit(EXIT_DECLINED)
        revoked = _run(lifecycle.forget, name)
        err.line(f"forgot {name}: keys, alias and record removed here", "✓ ", "bold green")
        if revoked:
            err.line(f"gave back {revoked}", "  ")
        return
    if not yes:
        if not sys.stdin.isatty():
            _fail(
                UsageError(
                    f"Refusing to remove {name!r} without confirmation",
                    "There is no terminal to ask on.",
                    f"run `prov rm {name} --yes`.",
                )
            )
        sessions = _run(lifecycle.live_sessions, name, asked=_asked())
        if sessions:
            listed = ", ".join(s.name for s in sessions)
            err.line(
                f"prov rm ends these tmux sessions and their agents: {listed}",
                "warning: ",
                "yellow",
            )
        if not typer.confirm(f"Remove {name} with its keys and ssh alias?", default=False):
            raise typer.Exit(EXIT_DECLINED)
    removal = _run(lifecycle.rm, name, asked=_asked())
    what = "container, keys and alias" if removal.container_removed else "keys and alias"
    err.line(f"removed {name}: {what}", "✓ ", "bold green")
    if removal.access_revoked:
        err.line(f"gave back {removal.access_revoked}", "  ")
    if removal.slots_removed:
        err.line(
            f"removed {removal.slots_removed} ready slot(s) too: no environment is left "
            "to use them (`prov up --prepare N` keeps them anyway)",
            "  ",
        )


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh(ctx: typer.Context, name: NameArg) -> None:
    """Open a shell (or run `-- CMD ...`) in the environment with the system ssh."""
    from provisioner.config import ProvPaths
    from provisioner.state import require

    paths = ProvPaths.from_env()
    _run(require, paths, _name(name))
    argv = ["ssh", "-F", str(paths.ssh_config), "--", alias_for(name), *ctx.args]
    try:
        resident.hand_over(argv)  # replacing prov with ssh is the point
    except OSError as exc:
        from provisioner.errors import ProvError as Err

        _fail(Err("Cannot run ssh", str(exc), "install the OpenSSH client (openssh-client)."))


@app.command()
def doctor(as_json: JsonOpt = False) -> None:
    """Check this machine for prov: engine, ssh, tmux, ntm, ssh Include, file modes, credentials."""
    from provisioner import doctor as doc

    findings = doc.diagnose(asked=_asked())
    if as_json:
        _print_json([{"name": f.name, "level": f.level, "detail": f.detail} for f in findings])
    else:
        styles = {doc.PASS: "green", doc.WARN: "yellow", doc.FAIL: "bold red"}
        for finding in findings:
            out.line(
                f"{finding.name}: {finding.detail}", f"{finding.level:4}  ", styles[finding.level]
            )
    if any(f.level == doc.FAIL for f in findings):
        raise typer.Exit(EXIT_CHECK_FAILED)


def _exec(argv: list[str], env: dict[str, str] | None = None) -> NoReturn:
    from provisioner.errors import ProvError as Err

    try:
        resident.hand_over(argv, env)  # handing the terminal over is the point
    except OSError as exc:
        _fail(Err(f"Cannot run {argv[0]}", str(exc), f"install {argv[0]} or put it on PATH."))


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(ctx: typer.Context, name: NameArg) -> None:
    """Run `-- CMD ...` (default: a login shell) as agent in the project dir (method 1)."""
    from provisioner import lifecycle
    from provisioner.config import ProvPaths
    from provisioner.engine import exec_argv
    from provisioner.state import require

    paths = ProvPaths.from_env()
    record = _run(require, paths, _name(name))
    engine = _run(lifecycle.engine_of, name, paths, _asked())
    _run(lifecycle.own_container, engine, name, paths)
    command = list(ctx.args) or ["bash", "-l"]
    tty = sys.stdin.isatty()
    _exec(exec_argv(container_name(name), record.project_dir, command, tty, engine.cli_host))


@app.command("alias")
def alias_(name: NameArg) -> None:
    """Print shell aliases (cc-NAME, cod-NAME, gmi-NAME) that run the agents in NAME."""
    import shlex

    from provisioner.agents import LAUNCH
    from provisioner.config import ProvPaths
    from provisioner.engine import exec_argv
    from provisioner.engine.site import over_ssh
    from provisioner.state import require

    record = _run(require, ProvPaths.from_env(), _name(name))
    for launch in LAUNCH.values():
        short, command = launch.ntm, launch.argv
        if over_ssh(record.engine):
            # On a remote engine: through the alias (prov's forwarded socket
            # comes and goes; the alias works whenever the environment runs).
            inside = f"cd {shlex.quote(record.project_dir)} && exec {shlex.join(command)}"
            line = shlex.join(["ssh", "-t", alias_for(name), inside])
        else:
            line = shlex.join(
                exec_argv(container_name(name), record.project_dir, command, tty=True)
            )
        out.line(f"alias {short}-{name}={shlex.quote(line)}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def route(ctx: typer.Context) -> None:
    """Run `-- AGENT ARGS` in the container whose project holds this directory, else
    locally (method 4; called by NTM's [agents] templates that `prov ntm-config --route`
    writes)."""
    import os

    from provisioner import route as routing
    from provisioner.engine import exec_argv
    from provisioner.errors import UsageError

    command = list(ctx.args)
    if not command:
        _fail(
            UsageError(
                "prov route needs the agent command",
                "Nothing after `--`.",
                "call it as `prov route -- claude ...`.",
            )
        )
    # The shell's logical $PWD is the path NTM cd'ed to (the mount target);
    # getcwd() would have resolved symlinks in it.
    cwd = str(Path.cwd())
    logical = os.environ.get("PWD", "")
    if logical and Path(logical).resolve() == Path(cwd).resolve():
        cwd = logical
    container = _run(routing.container_for, cwd, _asked())
    if container is None:
        _exec(command)
    _exec(exec_argv(container, cwd, command, sys.stdin.isatty()))


@app.command("ntm-config")
def ntm_config(
    name: Annotated[str | None, typer.Argument(help="Environment to run every agent in.")] = None,
    route_: Annotated[
        bool,
        typer.Option(
            "--route", help="Per-project routing via `prov route` instead of one container."
        ),
    ] = False,
    remove: Annotated[
        bool, typer.Option("--remove", help="Put back the entries prov replaced.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the diff, write nothing.")
    ] = False,
) -> None:
    """Point NTM's global [agents] at a container (method 3) or at `prov route` (method 4),
    editing NTM's config in place; comments and other settings are kept."""
    import shutil as _shutil

    from provisioner import ntmconfig
    from provisioner.config import ProvPaths
    from provisioner.host import ntm_config_path

    paths = ProvPaths.from_env()
    path = ntm_config_path()
    exe = str(Path(_shutil.which("prov") or sys.argv[0]).resolve())
    edit = _run(
        ntmconfig.edit_for,
        paths.home,
        _name(name) if name is not None else None,
        route_,
        remove,
        exe,
    )
    if edit is None:
        err.line(f"prov has not changed {path}; nothing to remove")
        return
    if dry_run:
        out.line(edit.diff or f"no change to {path}")
        return
    backup = _run(ntmconfig.save, edit, paths.home, remove)
    if backup is None and edit.after == edit.before:
        err.line(f"{path} already says that; nothing changed")
    else:
        saved = f" (backup: {backup})" if backup else ""
        err.line(f"updated [agents] in {path}{saved}", "✓ ", "bold green")


_VALUED = ("--docker-host", "--engine")  # the options before the command that take a value


def _only_the_command_asked(argv: list[str]) -> None:
    """Typer builds a click command for every registered command on each run
    (about 40 ms for this app's); when argv names one, only that one is
    registered. Anything else (no command, a misspelt one, `--help`) keeps
    them all, so click's own listing and errors stay as they are."""
    import typer.main

    words = iter(argv)
    for word in words:
        if word in _VALUED:
            next(words, None)
        elif not word.startswith("-"):
            break
    else:
        return
    commands = [
        c
        for c in app.registered_commands
        if (c.name or typer.main.get_command_name(c.callback.__name__ if c.callback else ""))
        == word
    ]
    groups = [g for g in app.registered_groups if g.name == word]
    if commands or groups:
        app.registered_commands, app.registered_groups = commands, groups


_built: typer.core.TyperGroup | None = None  # every command, built once by prov's resident


def build() -> None:
    """Build every command now (the resident does, before it serves runs)."""
    global _built
    import typer.main

    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)  # noqa: S101 - an app of commands
    _built = command


def main() -> None:
    try:
        # A served run: the name the client was called by.
        named = {"prog_name": resident.prog_name} if resident.prog_name else {}
        if _built is not None:
            _built(**named)
        else:
            _only_the_command_asked(sys.argv[1:])
            app(**named)
    except KeyboardInterrupt:
        err.line("", "interrupted", "bold red")
        sys.exit(EXIT_INTERRUPTED)
