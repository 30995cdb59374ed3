"""Stage 1 of `up`: everything known before Docker creates anything.

Checks (ownership of existing containers, mounts), the project dir, the
agent credentials, the session environment, keys and the image. A failure
leaves nothing of this run behind. The result is a frozen `Prepared`, which
service.py places and starts.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import (
    branchmode,
    egress,
    homedisk,
    host,
    injection,
    keys,
    mountpolicy,
    projectacl,
    protect,
    state,
)
from provisioner.config import (
    API_KEY_VARS,
    Extras,
    ProvPaths,
    UpRequest,
    check_session_value,
    is_loopback,
)
from provisioner.devcontainer import DevContainer
from provisioner.engine import ContainerInfo, Engine
from provisioner.errors import ConfigError, ProvError, UsageError
from provisioner.fsutil import file_lock
from provisioner.image import (
    BuiltImage,
    DevcontainerImage,
    ImageRequest,
    ensure_egress_image,
    ensure_image,
)
from provisioner.ownership import require_ours
from provisioner.plan import (
    LABEL_HOME,
    LABEL_NAME,
    container_name,
    home_id,
    home_volume_name,
    proxy_name,
)
from provisioner.progress import Reporter
from provisioner.spec import LABEL_MANAGED


@dataclass(frozen=True)
class Prepared:
    """What `prepare` found: everything known before Docker creates anything."""

    request: UpRequest
    reporter: Reporter
    project: host.ProjectDir
    existing: ContainerInfo | None
    public: keys.PublicKey
    identity: Path
    host_pair: keys.KeyPair
    built: BuiltImage
    mounted: tuple[host.CredentialMount, ...]
    session_env: tuple[tuple[str, str], ...]
    record: state.EnvRecord | None
    existing_proxy: ContainerInfo | None
    egress_image: str
    allow: tuple[str, ...]
    fresh: bool  # no key dir before this run: a failure removes it again
    # A remote engine: how the project gets there (rsync / none); "" when local.
    sync: str = ""
    credentials: str = "mount"  # mount / copy / none, as decided for this engine
    granted: bool = False  # this run gave the agent access to the project (projectacl)
    image_seconds: float = 0.0  # time spent building (or copying) the image, when it was
    # Project paths the host executes from, covered read-only inside (protect).
    guards: tuple[protect.Guard, ...] = ()
    # Private, loopback or link-local ranges its proxy may reach (--allow-net).
    allow_nets: tuple[str, ...] = ()
    # Where its proxy finds names before DNS: "ADDRESS NAME..." (egress.user_hosts).
    hosts: tuple[str, ...] = ()
    # Settings files offered as copies, put into a new container before it starts.
    settings: tuple[host.CredentialMount, ...] = ()
    # Branch mode: the clone's branch and the commit it starts at (None: mount mode).
    branch: str | None = None
    branch_base: str = ""
    # What the egress proxy injects (injection), the environment's CA for their
    # hosts, and the extra CAs (PEM) to trust for the real hosts.
    secrets: tuple[injection.Secret, ...] = ()
    egress_ca: injection.CA | None = None
    upstream_cas: bytes = field(default=b"", repr=False)
    # The project's devcontainer.json as applied (its commands run after ready).
    devcontainer: DevContainer | None = None
    home: homedisk.Home = field(default_factory=homedisk.Home)

    @property
    def name(self) -> str:
        return self.request.name


def prepare(
    engine: Engine,
    builder: Engine,
    request: UpRequest,
    reporter: Reporter,
    paths: ProvPaths,
    images: dict[ImageRequest, BuiltImage],
    images_lock: threading.Lock,
) -> Prepared:
    """Everything before the container: checks, project, credentials, keys, image.
    A failure leaves nothing of this run behind: no key dir for an environment
    that did not exist, no project dir that --create-dir made."""
    fresh = not paths.env_dir(request.name).exists()
    made: list[host.ProjectDir] = []
    granted: list[host.ProjectDir] = []
    placed: list[Path] = []  # projects that got placeholders in this run
    try:
        return _prepare_steps(
            engine,
            builder,
            request,
            reporter,
            paths,
            images,
            images_lock,
            made,
            granted,
            placed,
            fresh,
        )
    except BaseException:
        for path in placed:
            protect.remove_placeholders(path, paths.placeholders_ledger(request.name))
        for project in granted:
            revoke_grant(paths, request.name, project)
        for project in made:
            host.remove_created(project)
        if fresh:
            forget_keys(paths, request.name)
        raise


def revoke_grant(paths: ProvPaths, name: str, project: host.ProjectDir) -> None:
    """Undo the ACL grant this run made for an environment that never came up."""
    st = project.path.stat()
    projectacl.revoke(
        project.path, project.uid, (st.st_uid, st.st_gid), paths.project_acl_ledger(name)
    )


def forget_keys(paths: ProvPaths, name: str) -> None:
    with file_lock(paths.keys_lock):
        shutil.rmtree(paths.env_dir(name), ignore_errors=True)


def _prepare_steps(
    engine: Engine,
    builder: Engine,
    request: UpRequest,
    reporter: Reporter,
    paths: ProvPaths,
    images: dict[ImageRequest, BuiltImage],
    images_lock: threading.Lock,
    made: list[host.ProjectDir],
    granted: list[host.ProjectDir],
    placed: list[Path],
    fresh: bool,
) -> Prepared:
    existing, existing_proxy = _existing(engine, request, paths, reporter)
    site = engine.site
    sync, credentials = _modes(engine, request, paths)
    project, branch, base = _project(engine, request, sync, made)
    found_dc = _devcontainer(request, project.path)
    if found_dc is not None:
        request = _apply_devcontainer(request, found_dc, project.path, reporter)
    if site.mounts_local_paths:
        _check_mounts(request, project.path, paths, reporter)
    creds = _find_credentials(credentials)
    _report_credentials(creds, credentials, engine, request, project, reporter)
    secrets = _secrets_for(request, paths, reporter)
    public, identity, host_pair, egress_ca = _keys(request, paths, bool(secrets))
    _grant_project(project, paths, request.name, granted, reporter)
    guards = _guard_project(engine, request, project, paths, reporter, placed, branch, base)
    reporter.step("image")
    image_request = _image_request(request, project.path, paths, found_dc)
    images_made = _images(
        engine, builder, request, image_request, images, images_lock, paths, reporter
    )
    built = images_made.built
    applied_dc = None
    if found_dc is not None:
        request, applied_dc = _devcontainer_again(
            engine, request, found_dc, built, project.path, paths, reporter
        )
    session_env = _session_env(
        request.extras, secrets, request.containment.egress, reporter, applied_dc
    )
    if session_env:
        reporter.note("environment passed to sessions: " + ", ".join(k for k, _ in session_env))
    home = _home(engine, request, existing, built.tag, paths, reporter)
    return Prepared(
        request=request,
        reporter=reporter,
        project=project,
        existing=existing,
        public=public,
        identity=identity,
        host_pair=host_pair,
        built=built,
        mounted=_logins(credentials, creds, paths, request.name, project),
        session_env=session_env,
        record=state.load(paths, request.name),
        existing_proxy=existing_proxy,
        egress_image=images_made.egress_image,
        allow=images_made.allow,
        allow_nets=images_made.allow_nets,
        hosts=images_made.hosts,
        fresh=fresh,
        sync=sync,
        credentials=credentials,
        granted=bool(granted),
        guards=guards,
        settings=creds.settings,
        branch=branch,
        branch_base=base,
        image_seconds=images_made.seconds,
        secrets=secrets,
        egress_ca=egress_ca,
        upstream_cas=_upstream_cas(image_request, paths) if secrets else b"",
        devcontainer=applied_dc,
        home=home,
    )


def _home(
    engine: Engine,
    request: UpRequest,
    existing: ContainerInfo | None,
    image: str,
    paths: ProvPaths,
    reporter: Reporter,
) -> homedisk.Home:
    """The agent's home, bounded to a file system of its own (homedisk) and
    mounted before its container starts. A running environment has it
    mounted already. Where the engine cannot, the default says so and goes on
    with a plain volume; a --disk the user asked for fails instead."""
    name = request.name
    asked = request.containment.disk
    if existing is not None and existing.running:
        home = homedisk.Home(size=homedisk.bound_of(engine.volume(home_volume_name(name))))
        _kept(home, asked, name, reporter)
        return home
    if asked == 0 and engine.volume(home_volume_name(name)) is None:
        return homedisk.Home(why="as asked (--disk none)")
    labels = {LABEL_MANAGED: "true", LABEL_NAME: name, LABEL_HOME: home_id(paths)}
    try:
        home = homedisk.ensure(engine, name, image, asked, labels)
    except homedisk.HomeLost:
        raise
    except ProvError as exc:
        if asked is not None:
            raise type(exc)(
                f"Cannot bound {name}'s home to --disk {asked >> 20}m: {exc.what}",
                exc.seen,
                "pass --disk none for a plain volume (not bounded), or use an engine "
                "that lets containers use loop devices.",
            ) from None
        reporter.warn(f"the home is not bounded: {exc.what}. {exc.seen}")
        return homedisk.Home(why=f"this engine refused its file system ({exc.what})")
    if home.renewed:
        reporter.warn(
            f"{name}'s home volume had lost its file system (its disk volume "
            f"{homedisk.disk_volume_name(name)} is gone, and the home's files with it): "
            "a new, empty home was made"
        )
    _kept(home, asked, name, reporter)
    return home


def _kept(home: homedisk.Home, asked: int | None, name: str, reporter: Reporter) -> None:
    """An existing home keeps what it was made with: a --disk asked now that
    differs is said, not silently dropped."""
    if not asked or home.made or home.size >> 20 == asked >> 20:
        return
    kept = (
        f"the file system it was made with ({home.size >> 20}m)"
        if home.size
        else ("its plain volume (made before prov bounded homes)")
    )
    reporter.warn(
        f"--disk {asked >> 20}m is not applied: {name}'s home keeps {kept}; "
        f"`prov rm {name}` and `prov up` again make a new one (the home's files go with it)"
    )


def _find_credentials(credentials: str) -> host.Credentials:
    """The agents' logins and settings on this machine, as the mode needs them."""
    if credentials == "none":
        return host.Credentials((), ())
    return host.find_credentials(whole=credentials in ("mount", "copy"))


def _upstream_cas(image_request: ImageRequest, paths: ProvPaths) -> bytes:
    """What the proxy trusts for the real hosts it re-encrypts to: this
    machine's trust, and the extra CAs the image trusts."""
    return injection.host_trust(
        b"".join(host.ca_pem(f, paths.ca_cache) for f in image_request.ca_files)
    )


def _project(
    engine: Engine, request: UpRequest, sync: str, made: list[host.ProjectDir]
) -> tuple[host.ProjectDir, str | None, str]:
    """The project dir (made with --create-dir: recorded in `made`), the branch
    of branch mode (None: the tree itself), and the commit it starts at."""
    branch = _branch(engine, request)
    if sync == "none":
        project = _remote_project(engine, request)
    else:
        project = host.resolve_project_dir(
            request.name,
            request.project_dir,
            request.create_dir,
            mounted=sync != "rsync" and branch is None,
        )
        made.append(project)
    base = branchmode.require_repository(project.path) if branch is not None else ""
    return project, branch, base


def _devcontainer_again(
    engine: Engine,
    request: UpRequest,
    found: DevContainer,
    built: BuiltImage,
    project_dir: Path,
    paths: ProvPaths,
    reporter: Reporter,
) -> tuple[UpRequest, DevContainer]:
    """The file once more with what the image records (its features', and a
    devcontainer image's own settings), which may ask for more: applied, and
    new mounts checked."""
    from provisioner import devcontainer

    ctx = devcontainer.Context(project_dir, request.name, devcontainer.host_env())
    applied = devcontainer.with_image(found, ctx, built.metadata, built.base)
    request = _apply_devcontainer(request, applied, project_dir, reporter, final=True)
    if engine.site.mounts_local_paths and applied.mounts != found.mounts:
        _check_mounts(request, project_dir, paths, reporter)
    return request, applied


def _modes(engine: Engine, request: UpRequest, paths: ProvPaths) -> tuple[str, str]:
    """How the project gets there and which logins it gets, for this engine;
    what this engine cannot do is refused before anything is made."""
    extras = request.extras
    _check_ca_certs(extras.ca_certs, paths)
    site = engine.site
    if not site.mounts_local_paths and extras.mounts:
        raise UsageError(
            "--mount is not available on a remote engine",
            f"The engine is {site.describe()}; a bind mount's source would be a path "
            "on that host, not on this machine.",
            "leave --mount out (the project reaches the environment with --sync), or use "
            "this machine's engine.",
        )
    return site.sync_mode(extras.sync), _credentials_mode(engine, extras.credentials)


def _keys(
    request: UpRequest, paths: ProvPaths, injects: bool
) -> tuple[keys.PublicKey, Path, keys.KeyPair, injection.CA | None]:
    """The key sshd accepts (and its IdentityFile), the host
    key, and the environment's CA when its proxy injects secrets: made once,
    kept in the env dir."""
    with file_lock(paths.keys_lock):
        public, identity = _identity(request, paths)
        host_pair = keys.load_or_create(
            paths.env_dir(request.name), keys.HOST_KEY_NAME, f"prov-{request.name}-host"
        )
        egress_ca = _egress_ca(paths, request.name) if injects else None
    return public, identity, host_pair, egress_ca


def _existing(
    engine: Engine, request: UpRequest, paths: ProvPaths, reporter: Reporter
) -> tuple[ContainerInfo | None, ContainerInfo | None]:
    """The environment's container and its proxy, if they exist (and are this
    PROV_HOME's: another's are refused)."""
    existing = engine.find(container_name(request.name))
    if existing is not None:
        require_ours(existing, paths)
    existing_proxy = engine.find(proxy_name(request.name))
    if existing_proxy is not None:
        require_ours(existing_proxy, paths)
    if not is_loopback(request.bind):
        reporter.warn(
            f"SSH will be published on {request.bind}, reachable from other "
            "machines; only key login for `agent` is accepted"
        )
    return existing, existing_proxy


def _report_credentials(
    creds: host.Credentials,
    credentials: str,
    engine: Engine,
    request: UpRequest,
    project: host.ProjectDir,
    reporter: Reporter,
) -> None:
    """Say which of the agents' logins the environment gets, and what to mind."""
    if creds.found:
        how = {
            "tokens": "logins shared (refreshed in place, here and inside)",
            "copy": "credentials copied (private to this environment)",
            "mount": "credential dirs mounted",
        }[credentials]
        reporter.note(f"{how}: " + ", ".join(str(c.source) for c in creds.found))
    if creds.settings:
        reporter.note(
            "settings offered as copies (never written back): "
            + ", ".join(str(c.source) for c in creds.settings)
        )
    if creds.missing and credentials != "tokens":
        reporter.note("not found, not mounted: " + ", ".join(str(p) for p in creds.missing))
    if credentials == "mount":
        reporter.warn(
            "--credentials mount: the agent can write your agents' config dirs, which the "
            "CLIs on this machine read as settings and run (Claude's hooks and MCP servers, "
            "Codex's notify, Gemini's hooks and commands): the next `claude`, `codex` or "
            "`gemini` you start here runs what it wrote. The default (--credentials tokens) "
            "shares only the login files"
        )
    asked = request.extras.credentials
    if credentials == "none" and not engine.site.mounts_local_paths and asked is None:
        reporter.note(
            "agent logins stay on this machine (a remote engine gets none by default): "
            "--credentials copy puts a private copy there, or log in inside"
        )
    if credentials in ("mount", "tokens"):
        locked = [
            c.source
            for c in creds.found
            if not host.writable_by(c.source, project.uid, project.gid)
        ]
        if locked:
            reporter.warn(
                f"the agent (UID {project.uid}) cannot write "
                + ", ".join(str(p) for p in locked)
                + ": logins and token refreshes will fail there; use --credentials copy "
                "(a private copy the agent owns) or give those paths to that user"
            )
    if sys.platform == "darwin" and credentials != "none":
        reporter.note(
            "on macOS Claude Code keeps its login in the Keychain, which no container "
            "can read: set ANTHROPIC_API_KEY to log Claude in"
        )


def _grant_project(
    project: host.ProjectDir,
    paths: ProvPaths,
    name: str,
    granted: list[host.ProjectDir],
    reporter: Reporter,
) -> None:
    """A root-owned project: the agent's user gets access by ACL (said, and
    taken back by `prov rm`); recorded in `granted` so a failure undoes it."""
    if not project.grant or projectacl.has_grant(project.path, project.uid):
        return
    projectacl.grant(project.path, project.uid, paths.project_acl_ledger(name))
    granted.append(project)
    reporter.warn(
        f"{project.path} is owned by root and the agent never runs as root: gave its "
        f"user (UID {project.uid}) read and write access there with POSIX ACLs; "
        f"`prov rm {name}` takes them away again"
    )


@dataclass(frozen=True)
class _Images:
    """The environment's image, its gate's (or ""), the allowlist, and the
    seconds spent building when anything was built."""

    built: BuiltImage
    egress_image: str
    allow: tuple[str, ...]
    seconds: float
    allow_nets: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()  # "ADDRESS NAME..." the proxy finds names at (egress.user_hosts)


def _images(
    engine: Engine,
    builder: Engine,
    request: UpRequest,
    image_request: ImageRequest,
    images: dict[ImageRequest, BuiltImage],
    images_lock: threading.Lock,
    paths: ProvPaths,
    reporter: Reporter,
) -> _Images:
    """Build or reuse the environment's image and, when it has a gate, the
    gate's (environments asking for the same image share one build); a
    remote engine gets copies."""
    started = time.monotonic()
    with images_lock:
        built = images.get(image_request) or ensure_image(
            builder, image_request, reporter.note, reporter.detail, paths.ca_cache
        )
        images[image_request] = built
        _copy_image(builder, engine, built.tag, reporter)
    containment = request.containment
    egress_image, egress_built = "", False
    allow: tuple[str, ...] = ()
    nets: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    if containment.egress == "allowlist":
        allow = egress.allowlist(containment.allow, paths.egress_defaults, paths.npm_registry_cache)
        nets = egress.allowed_nets(containment.allow_nets)
        hosts = egress.user_hosts()
    if containment.egress == "allowlist" or (containment.internal and request.publishes):
        # the gate: the egress proxy, and the relay of a published port
        with images_lock:
            egress_image, egress_built = ensure_egress_image(
                builder, request.base_image, reporter.note, reporter.detail
            )
            _copy_image(builder, engine, egress_image, reporter)
    seconds = time.monotonic() - started if built.built_now or egress_built else 0.0
    if not built.built_now:
        reporter.detail(f"reusing image {built.tag}")
    if built.agent_versions:
        reporter.note("agents: " + ", ".join(f"{a} {v}" for a, v in built.agent_versions.items()))
    return _Images(built, egress_image, allow, seconds, nets, hosts)


def _logins(
    credentials: str,
    creds: host.Credentials,
    paths: ProvPaths,
    name: str,
    project: host.ProjectDir,
) -> tuple[host.CredentialMount, ...]:
    """What of the agents' logins the container mounts: the environment's own
    login files (tokens, which the keeper keeps fresh), a private copy, or the
    dirs themselves."""
    if credentials == "tokens":
        from provisioner import keeper

        with file_lock(paths.keys_lock):
            mounted = tuple(
                host.CredentialMount(m.source, m.target)
                for m in keeper.prepare_env(paths, name, Path.home(), project.uid, project.gid)
            )
            keeper.sync_once(paths)
        return mounted
    if credentials == "copy":
        return host.copy_credentials(
            creds.found, paths.env_dir(name) / "credentials", project.uid, project.gid
        )
    return creds.found


def _check_ca_certs(certs: tuple[Path, ...], paths: ProvPaths) -> None:
    """Each --ca-cert is a certificate (PEM or DER) before anything is made."""
    for cert in certs:
        if not cert.is_file():
            raise ConfigError(f"--ca-cert {cert} does not exist", "", "pass a CA certificate file.")
        host.ca_pem(cert, paths.ca_cache)


def _branch(engine: Engine, request: UpRequest) -> str | None:
    """The clone's branch in branch mode (None: the agent works in the tree)."""
    asked = request.extras.branch
    if asked is None:
        return None
    if not engine.site.mounts_local_paths:
        raise UsageError(
            "--clone/--branch is not available on a remote engine yet",
            f"The engine is {engine.target.describe()}; branch mode mounts this machine's "
            "repository read-only, which a container there cannot mount.",
            "leave them out there (--sync rsync gives the environment a copy of its own, and "
            "`prov sync --back` never brings hooks or git config back), or use this machine's "
            "engine.",
        )
    return asked or branchmode.default_branch(request.name)


def _guard_project(
    engine: Engine,
    request: UpRequest,
    project: host.ProjectDir,
    paths: ProvPaths,
    reporter: Reporter,
    placed: list[Path],
    branch: str | None,
    base: str,
) -> tuple[protect.Guard, ...]:
    """The project paths the host executes from, to cover read-only inside; the
    ones missing get placeholders on the host (said, and removed with the
    environment). Only where the environment mounts this machine's project,
    and not in branch mode (the agent's tree is a clone of its own)."""
    if branch is not None:
        reporter.note(
            f"branch mode: the agent works in a clone of its own on {branch} (from "
            f"{base[:12]}); this machine's tree is not mounted, its .git only read-only"
        )
        return ()
    if not engine.site.mounts_local_paths:
        if request.extras.sync == "none":
            reporter.warn(
                "with --sync none the environment writes the engine host's project, whose "
                "git hooks, git config and tools' settings prov does not cover there; use "
                "--sync rsync (`prov sync --back` never brings those back)"
            )
        return ()
    extra = protect.extra_kinds(project.path, request.extras.protect)
    ledger = paths.placeholders_ledger(request.name)
    found = protect.survey(
        project.path, tuple(rel for rel, _ in extra), tuple(protect.placeholders(ledger))
    )
    for rel in protect.unguardable(found, extra):
        reporter.warn(
            f"{project.path / rel} is a symbolic link, which prov cannot cover: the agent "
            "can replace it"
        )
    guards = protect.plan_guards(found, extra)
    st = project.path.stat()
    made = protect.make_placeholders(project.path, guards, (st.st_uid, st.st_gid), ledger)
    if made:
        placed.append(project.path)
        reporter.note(
            "made empty placeholders for protected paths that do not exist, so the agent "
            f"cannot make them (`prov down` removes them while empty): {', '.join(made)}"
        )
    return guards


def _credentials_mode(engine: Engine, asked: str | None) -> str:
    site = engine.site
    if asked in ("mount", "tokens") and not site.mounts_local_paths:
        raise UsageError(
            f"--credentials {asked} is not available on a remote engine",
            f"The engine is {site.describe()}; your agent logins are files on this "
            "machine, which a container there cannot mount.",
            "use --credentials copy (a private copy, put there once) or --credentials none "
            "(the default there: log the agents in inside).",
        )
    return asked or site.default_credentials


def _copy_image(builder: Engine, engine: Engine, tag: str, reporter: Reporter) -> None:
    """A remote engine gets the image built here (never pulled there)."""
    if engine.site.builds_here:
        return
    from provisioner.engine import transfer

    copied, seconds, size = transfer.ensure_on(builder, engine, tag, reporter.detail)
    if copied:
        reporter.note(
            f"copied image {tag} to {engine.target.host}: {size / 1e6:.0f} MB in {seconds:.1f} s"
        )


def _remote_project(engine: Engine, request: UpRequest) -> host.ProjectDir:
    """--sync none: the project is the engine host's own directory at that path."""
    import shlex

    site = engine.site
    path = (request.project_dir or host.ntm_projects_base() / request.name).expanduser()
    path = path.absolute()
    code, output = site.run(f"stat -L -c '%u %g %F' -- {shlex.quote(str(path))}")
    fields = output.split()
    if code != 0 or len(fields) < 3 or fields[2] != "directory":
        raise ConfigError(
            f"Project directory {path} does not exist on the engine host",
            f"With --sync none the environment mounts that path on "
            f"{site.display()}; `stat` there said: "
            + (" ".join(output.split())[-200:] or f"exit {code}")
            + ".",
            "create it there (or clone the project there), or use --sync rsync to push it "
            "from this machine.",
        )
    uid, gid = int(fields[0]), int(fields[1])
    if uid == 0:
        raise ConfigError(
            f"Project directory {path} on the engine host is owned by root, and the agent "
            "never runs as root",
            f"With --sync none the environment mounts that path on {site.display()}, "
            "where the agent could not write.",
            "give it to a regular user there (`chown -R USER: DIR`), or use --sync rsync "
            "(the environment then gets a copy of its own).",
        )
    return host.ProjectDir(path, uid, gid)


def _check_mounts(
    request: UpRequest, project_dir: Path, paths: ProvPaths, reporter: Reporter
) -> None:
    """Refuse mounts that would hand the agent the host (see mountpolicy)."""
    ctx = mountpolicy.HostContext(home=Path.home().resolve(), prov_home=paths.home.resolve())
    unsafe = request.containment.allow_unsafe_mount
    checks = [(project_dir, str(project_dir), "the project dir")]
    checks += [(m.source, m.target, f"{m.origin} {m.source}") for m in request.extras.mounts]
    targets: dict[str, str] = {}
    for source, target, what in checks:
        warning = mountpolicy.check_source(source, what, ctx, unsafe)
        if warning:
            reporter.warn(warning)
        normal = mountpolicy.check_target(target, what)
        if normal in targets:
            raise UsageError(
                f"Two mounts at {normal}",
                f"{targets[normal]} and {what} both go there.",
                "give each --mount its own target.",
            )
        targets[normal] = what


def _identity(request: UpRequest, paths: ProvPaths) -> tuple[keys.PublicKey, Path]:
    """The key sshd will accept and the IdentityFile for ssh config."""
    if request.key_file is not None:
        pub_path = request.key_file.expanduser().absolute()
        public = keys.read_public_key_file(pub_path)
        private = pub_path.with_suffix("") if pub_path.suffix == ".pub" else None
        # With only the .pub, IdentityFile still selects that key from ssh-agent.
        identity = private if private is not None and private.exists() else pub_path
        return public, identity
    pair = keys.load_or_create(
        paths.env_dir(request.name), keys.CLIENT_KEY_NAME, f"prov-{request.name}"
    )
    return pair.public, paths.env_dir(request.name) / keys.CLIENT_KEY_NAME


def _secrets_for(
    request: UpRequest, paths: ProvPaths, reporter: Reporter
) -> tuple[injection.Secret, ...]:
    """The secrets the proxy injects for this environment: the ones kept from
    earlier `up`s, the agents' API keys set here, then --secret (which wins),
    less --drop-secret. Kept in the env dir (0600) for the next `up`."""
    extras = request.extras
    if request.containment.egress != "allowlist":
        if extras.secrets:
            raise UsageError(
                "--secret needs the egress proxy",
                f"With --egress {request.containment.egress} there is no proxy to put the "
                "value into requests; the agent would have to hold it.",
                "leave --egress out (allowlist, the default), or pass the value with -e if "
                "the agent may read it.",
            )
        return ()
    store = paths.env_dir(request.name) / "secrets.json"
    kept = injection.load_secrets(store)
    found = injection.merge([*kept, *injection.builtins(dict(os.environ))], list(extras.secrets))
    found = tuple(s for s in found if s.name not in extras.drop_secrets)
    if found != kept:
        injection.save_secrets(store, found)
    if found:
        reporter.note(
            "secrets injected by the proxy (a placeholder inside): "
            + ", ".join(s.public() for s in found)
        )
    return found


def _egress_ca(paths: ProvPaths, name: str) -> injection.CA:
    """The environment's CA, for its proxy: made once, kept in its env dir."""
    folder = paths.egress_dir(name)
    try:
        return injection.CA((folder / "ca.pem").read_bytes(), (folder / "ca.key").read_bytes())
    except OSError:
        ca = injection.make_ca(name)
        injection.write_conf_dir(folder, {"ca.pem": ca.cert_pem, "ca.key": ca.key_pem})
        return ca


def _session_env(
    extras: Extras,
    secrets: tuple[injection.Secret, ...],
    egress_mode: str,
    reporter: Reporter,
    dc: DevContainer | None = None,
) -> tuple[tuple[str, str], ...]:
    """Placeholders for the proxy's secrets, else the agents' API keys set here
    (their values, where there is no proxy), then devcontainer.json's
    variables (containerEnv, runArgs' -e, remoteEnv), then --env/--env-file
    (which win)."""
    pairs = {s.name: s.placeholder for s in secrets}
    injected = set(pairs)
    if dc is not None:
        for key, value in (*dc.container_env, *dc.env, *dc.remote_env):
            if key in injected:
                reporter.warn(
                    f"{dc.path} sets {key}, which the egress proxy injects: the placeholder "
                    "stays (the proxy puts the real value into requests)"
                )
                continue
            pairs[key] = value
    if egress_mode != "allowlist":
        passed = {key: os.environ[key] for key in API_KEY_VARS if os.environ.get(key)}
        if passed and egress_mode == "open":
            reporter.warn(
                "with --egress open there is no proxy to inject "
                + ", ".join(passed)
                + ": the agent gets the values and can read them (the default allowlist "
                "keeps them out of its reach)"
            )
        pairs.update(passed)
    pairs.update(extras.env)
    for key, value in pairs.items():
        check_session_value(key, value)
    return tuple(pairs.items())


def _image_request(
    request: UpRequest, project_dir: Path, paths: ProvPaths, dc: DevContainer | None = None
) -> ImageRequest:
    extras = request.extras
    dockerfile = extras.dockerfile
    if dockerfile is None and (project_dir / ".prov" / "Dockerfile").is_file():
        dockerfile = project_dir / ".prov" / "Dockerfile"
    dc_image = None
    if dc is not None and not extras.from_image:
        dc_image = DevcontainerImage(
            dc.path, dc.digest, project_dir, dc.image, dc.build, dc.features
        )
    if dockerfile is not None and not dockerfile.is_file():
        raise ConfigError(
            f"Project Dockerfile {dockerfile} does not exist",
            "",
            "fix --dockerfile, or create .prov/Dockerfile in the project.",
        )
    return ImageRequest(
        base_image=request.base_image,
        from_image=extras.from_image,
        agents=extras.agents,
        versions=extras.agent_versions,
        ca_files=(*host.extra_ca_files(), *extras.ca_certs),
        npm_registry=host.npm_registry_url(paths.npm_registry_cache) if extras.agents else "",
        project_dockerfile=dockerfile.absolute() if dockerfile else None,
        devcontainer=dc_image,
    )


def _devcontainer(request: UpRequest, project_dir: Path) -> DevContainer | None:
    """The project's devcontainer.json (or --devcontainer's), read and checked:
    what would break containment is refused here, before anything is made."""
    from provisioner import devcontainer

    extras = request.extras
    if extras.no_devcontainer:
        return None
    path = devcontainer.find(project_dir, extras.devcontainer)
    if path is None:
        return None
    ctx = devcontainer.Context(project_dir, request.name, devcontainer.host_env())
    return devcontainer.resolve(path, ctx)


def _apply_devcontainer(
    request: UpRequest,
    dc: DevContainer,
    project_dir: Path,
    reporter: Reporter,
    final: bool = False,
) -> UpRequest:
    """The request with what the file asks for that prov has an option of its
    own for (mounts, limits, GPUs); the command line wins where both say."""
    from dataclasses import replace

    from provisioner.config import ExtraMount, parse_cpus, parse_memory

    extras, containment = request.extras, request.containment
    if not final:
        reporter.note(f"using {dc.path}" + (f" (image {dc.image})" if dc.image else ""))
        if extras.from_image:
            reporter.note(f"--from {extras.from_image} is the image; {dc.path} gives the rest")
        own = extras.dockerfile or project_dir / ".prov" / "Dockerfile"
        if own.is_file():
            reporter.note(
                f"both apply: {dc.path} makes the base image, {own} is built on top of it "
                "(with prov's layers in between)"
            )
    else:
        for item in dc.notes:
            reporter.note(item)
        if dc.unsupported:
            reporter.warn(f"{dc.path}: prov does not apply " + "; ".join(dc.unsupported))
        if dc.forward_ports:
            reporter.note(
                "forwarded through the alias (while an ssh to it is open): "
                + ", ".join(f"localhost:{p}" for p in dc.forward_ports)
            )
    mounts = list(extras.mounts)
    for source, target, read_only in dc.mounts:
        path = Path(source).expanduser()
        if not path.is_absolute():
            path = (dc.path.parent / path).absolute()
        if not path.exists():
            from provisioner.errors import ConfigError

            raise ConfigError(
                f"{dc.path} mounts {source}, which does not exist",
                "Docker would create a root-owned empty directory in its place.",
                "create it first, or fix the file's mounts.",
            )
        mount = ExtraMount(path, target, read_only, origin=f"{dc.path} mount")
        if all(m.target != mount.target for m in mounts):
            mounts.append(mount)
    gpus = extras.gpus
    if gpus is None and dc.gpu == "all":
        gpus = -1
    elif gpus is None and dc.gpu == "optional" and final:
        reporter.note(
            "hostRequirements.gpu is optional: no GPUs asked for (pass --gpus all for them)"
        )
    memory, cpus = containment.memory, containment.cpus
    if memory is None and dc.memory:
        memory = parse_memory(dc.memory)
    if cpus is None and dc.cpus is not None:
        cpus = parse_cpus(dc.cpus)
    return replace(
        request,
        extras=replace(extras, mounts=tuple(mounts), gpus=gpus),
        containment=replace(containment, memory=memory, cpus=cpus),
    )
