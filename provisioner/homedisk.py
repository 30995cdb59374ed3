"""The agent's home on a file system of a fixed size.

Docker's overlay2 on ext4 (the usual engine host) has no quota: a plain home
volume takes what the agent writes, up to the whole disk. So the home is a
file system of its own: a sparse ext4 image in a volume prov makes
(`prov-NAME-disk`), loop-mounted on the engine host by prov's disk keeper
(`prov-diskd`, one per engine: a resident container with SYS_ADMIN and the
loop devices, no network, that only waits; prov execs the script below in
it, never anything of the agent's, ~70 ms against ~400 ms for a container
of its own), and handed to the environment as its home volume, a bind of
that mount. The agent writes until ENOSPC at
the size; the host's disk pays for what was written, never more than the
size.

The mount does not survive a reboot of the engine host: `up` and `start`
mount it again before the container starts, and the entrypoint refuses to
start sshd on a home that is not that file system (PROV_HOME_BOUND=1), so a
`docker start` behind prov's back never runs the agent on the host's disk.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from provisioner.engine import wire
from provisioner.errors import ProvError
from provisioner.plan import LABEL_NAME, LABEL_ROLE, home_volume_name
from provisioner.spec import LABEL_MANAGED

if TYPE_CHECKING:
    from provisioner.engine import Engine

DISK_LABEL = "prov.disk"  # on the home volume: bytes of its file system
IMAGE_LABEL = "prov.disk-image"  # on the disk volume: the image its helper runs
IMAGE_FILE = "home.img"
MOUNT_DIR = "mnt"
DISKD = "prov-diskd"  # the disk keeper's container, one per engine
DISKD_ROLE = "diskd"
VOLUMES_AT = "/volumes"  # where the keeper sees Docker's volumes directory
# One environment's home may take a quarter of the free space of the engine
# host's Docker root at its creation, at most 64 GiB and at least 1 GiB.
SHARE = 4
MAX_DEFAULT = 64 << 30
MIN_SIZE = 1 << 30
AUTO = "auto"

# The keeper's script: "mount DIR SIZE|auto" or "release DIR", DIR the disk
# volume's directory as the keeper sees it. It needs only util-linux, mount
# and e2fsprogs (prov's SSH layer has them). It prints `size=BYTES` once the
# file system is mounted. Every step is idempotent, so
# a second `up` (or two racing) finds the image made and the mount there.
SCRIPT = r"""
set -eu
dir=$2 img=$2/home.img mnt=$2/mnt
if [ "$1" = release ]; then
	if mountpoint -q "$mnt"; then umount "$mnt"; fi
	exit 0
fi
size=$3
mkdir -p "$mnt"
if [ ! -e "$img" ]; then
	if [ "$size" = auto ]; then
		avail=$(df -P -k "$dir" | awk 'NR == 2 { print $4 }')
		size=$((avail / SHARE_ * 1024))
		if [ "$size" -gt MAX_ ]; then size=MAX_; fi
		if [ "$size" -lt MIN_ ]; then size=MIN_; fi
	fi
	size=$((size / 1048576 * 1048576))
	rm -f "$img.new"
	truncate -s "$size" "$img.new"
	chmod 600 "$img.new" # the agent's home, tokens included: root's alone
	mkfs.ext4 -q -F -m 0 -E lazy_itable_init=1,lazy_journal_init=1 "$img.new" >&2
	mv "$img.new" "$img"
fi
if ! mountpoint -q "$mnt"; then
	# noinit_itable: the kernel does not zero the inode tables in the
	# background (that would write ~1.5% of the size to the host's disk);
	# discard: what the agent deletes is given back to the host's disk.
	# The helper's /dev was filled at its start: a loop device the kernel
	# adds now has no node here yet. Two helpers may pick the same one; the
	# loser tries the next.
	tries=0
	until
		dev=$(losetup -f)
		[ -e "$dev" ] || mknod "$dev" b 7 "${dev#/dev/loop}"
		err=$(mount -o "loop=$dev,nosuid,nodev,noinit_itable,discard" "$img" "$mnt" 2>&1)
	do
		tries=$((tries + 1))
		if [ "$tries" -ge 20 ]; then echo "$err" >&2; exit 1; fi
	done
fi
# Left empty: Docker fills an empty volume from the image's /home/agent (its
# owner and mode too) when the environment's container is created.
# (mkfs's lost+found removed while empty: a fill interrupted before started).
rmdir "$mnt/lost+found" 2>/dev/null || true
echo "size=$(stat -c %s "$img")"
"""


def disk_volume_name(name: str) -> str:
    return f"prov-{name}-disk"


def script() -> str:
    return (
        SCRIPT.replace("SHARE_", str(SHARE))
        .replace("MAX_", str(MAX_DEFAULT))
        .replace("MIN_", str(MIN_SIZE))
    )


def mount_args(directory: str, size: int | None) -> list[str]:
    """The script's arguments for a home of `size` bytes (None: sized by it)."""
    return ["mount", directory, AUTO if size is None else str(size)]


def keeper_paths(mountpoint: str) -> tuple[str, str]:
    """(Docker's volumes directory on the engine host, the volume's directory as
    the keeper sees it) for a volume's Mountpoint (`.../volumes/NAME/_data`)."""
    volumes = posixpath.dirname(posixpath.dirname(mountpoint.rstrip("/")))
    return volumes, VOLUMES_AT + mountpoint[len(volumes) :]


def home_volume_options(disk_mountpoint: str) -> dict[str, str]:
    """The home volume's driver options: a bind of the disk's mount."""
    return {"type": "none", "o": "bind", "device": f"{disk_mountpoint}/{MOUNT_DIR}"}


def parse_size(output: str) -> int | None:
    """The `size=BYTES` line the helper printed last, if any."""
    for line in reversed(output.splitlines()):
        key, _, value = line.strip().partition("=")
        if key == "size" and value.isdigit():
            return int(value)
    return None


def bound_of(volume: dict[str, object] | None) -> int:
    """The size a home volume is bounded to (0: a plain volume, unbounded)."""
    if not volume:
        return 0
    labels = volume.get("Labels") or {}
    value = labels.get(DISK_LABEL, "") if isinstance(labels, dict) else ""
    return int(value) if isinstance(value, str) and value.isdigit() else 0


class HomeLost(ProvError):
    """The home volume binds a file system that is gone, and cannot be made
    again under the container that holds it: no fallback to a plain volume."""


@dataclass(frozen=True)
class Home:
    """The environment's home as `up` found or made it."""

    size: int = 0  # bytes of its own file system; 0: not bounded
    made: bool = False  # this run made the disk (a failure removes it again)
    why: str = ""  # why it is not bounded, in words
    renewed: bool = False  # its home volume had lost its file system: made again, empty


def ensure(engine: Engine, name: str, image: str, size: int | None, labels: dict[str, str]) -> Home:
    """The environment's home file system, made (`size` bytes; None: sized by
    the helper) or found, and mounted on the engine host; its home volume a
    bind of it. A home volume made before prov bounded homes stays as it is.
    A failure leaves nothing of this call behind."""
    home = engine.volume(home_volume_name(name))
    renewed = False
    if home is not None:
        bound = bound_of(home)
        if not bound:
            return Home(why="its home volume was made before prov bounded homes")
        disk = engine.volume(disk_volume_name(name))
        if disk is not None:
            _mount(engine, disk, image, bound)
            return Home(size=bound)
        # A bind of a file system whose disk is gone (removed by hand, or an
        # `up` cut off between the two): it holds nothing and binds nothing,
        # so no container could start on it. It is made again, unless a
        # container still holds it.
        try:
            engine.remove_volume(home_volume_name(name))
        except ProvError as exc:
            raise HomeLost(
                f"{name}'s home volume has lost its file system",
                f"Its disk volume {disk_volume_name(name)} is gone (and the home's files "
                f"with it), and Docker would not remove the home volume: {exc.what}.",
                f"`prov rm {name}` and `prov up {name}` make a new, empty home.",
            ) from None
        renewed = True
    disk = engine.create_volume(disk_volume_name(name), {**labels, IMAGE_LABEL: image})
    try:
        got = _mount(engine, disk, image, size)
        engine.create_volume(
            home_volume_name(name),
            {**labels, DISK_LABEL: str(got)},
            home_volume_options(str(disk["Mountpoint"])),
        )
    except BaseException:
        # Undone as far as it goes: the home volume (Docker may have made it
        # before a Ctrl-C reached us), then the mount (a helper that could not
        # mount may not be able to unmount either: then nothing is mounted).
        with contextlib.suppress(ProvError):
            engine.remove_volume(home_volume_name(name))
        with contextlib.suppress(ProvError):
            _unmount(engine, name, disk, image)
        with contextlib.suppress(ProvError):
            engine.remove_volume(disk_volume_name(name))
        raise
    return Home(size=got, made=True, renewed=renewed)


# Every home's mount point and image as the keeper sees them (shell globs),
# and the patterns that name its environment.
HOMES_GLOB = f"{VOLUMES_AT}/prov-*-disk/_data/{MOUNT_DIR}"
IMAGES_GLOB = f"{VOLUMES_AT}/prov-*-disk/_data/{IMAGE_FILE}"
_HOME_AT = re.compile(rf"{re.escape(VOLUMES_AT)}/prov-(.+)-disk/_data/{MOUNT_DIR}")
_IMAGE_AT = re.compile(rf"{re.escape(VOLUMES_AT)}/prov-(.+)-disk/_data/{re.escape(IMAGE_FILE)}")
HOMES_SCRIPT = f"df -P -k {HOMES_GLOB} 2>/dev/null; stat -c 'image %n %s' {IMAGES_GLOB} 2>/dev/null"


def homes_in_use(engine: Engine, summaries: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Each mounted home file system of these containers (Docker's list
    entries): environment name -> (bytes used, its size as made). Read on
    this machine when the engine is here and Docker's root can be read;
    else from one exec in the disk keeper (~70 ms), when it runs: a listing
    never starts it."""
    points: dict[str, tuple[str, str]] = {}
    for item in summaries:
        name = (item.get("Labels") or {}).get(LABEL_NAME, "")
        for mount in item.get("Mounts") or []:
            if name and mount.get("Name") == home_volume_name(name) and mount.get("Source"):
                volumes, _ = keeper_paths(str(mount["Source"]))
                disk = f"{volumes}/{disk_volume_name(name)}/_data"
                points[name] = (f"{disk}/{MOUNT_DIR}", f"{disk}/{IMAGE_FILE}")
    if not points:
        return {}
    here = engine.mounts_here(points)
    if here is not None:
        return here
    info = engine.find(DISKD)
    if info is None or not info.running:
        return {}
    try:
        _, output = engine.exec_run(info.id, ["sh", "-c", HOMES_SCRIPT])
    except ProvError:
        return {}
    return {name: use for name, use in parse_homes(output).items() if name in points}


def parse_homes(output: str) -> dict[str, tuple[int, int]]:
    """HOMES_SCRIPT's output: `df -P -k` lines whose mount point is a home's
    own (an unmounted home's directory reports the file system it sits on),
    each with its image's size (the bound `status` and `up` say)."""
    used: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == "image" and fields[2].isdigit():
            image = _IMAGE_AT.fullmatch(fields[1])
            if image:
                sizes[image[1]] = int(fields[2])
        elif len(fields) >= 6 and fields[2].isdigit() and (home := _HOME_AT.fullmatch(fields[-1])):
            used[home[1]] = int(fields[2]) * 1024
    return {name: (n, sizes[name]) for name, n in used.items() if name in sizes}


def release(engine: Engine, name: str, image: str = "") -> None:
    """Unmount the home file system (its home volume and every container using
    it already gone) and remove its disk volume. Nothing to do for a plain home.
    `image`: one to run the helper from (default: the one that made the disk)."""
    disk = engine.volume(disk_volume_name(name))
    if disk is None:
        return
    _unmount(engine, name, disk, image)
    engine.remove_volume(disk_volume_name(name))


def _unmount(engine: Engine, name: str, disk: dict[str, Any], image: str) -> None:
    labels = disk.get("Labels") or {}
    volumes, directory = keeper_paths(str(disk["Mountpoint"]))
    _keeper_run(
        engine, image or str(labels.get(IMAGE_LABEL, "")), volumes, ["release", directory],
        f"unmount {name}'s home file system",
    )  # fmt: skip


def _mount(engine: Engine, disk: dict[str, Any], image: str, size: int | None) -> int:
    volumes, directory = keeper_paths(str(disk["Mountpoint"]))
    output = _keeper_run(
        engine, image, volumes, mount_args(directory, size), "make and mount the home's file system"
    )
    got = parse_size(output)
    if got is None:
        raise ProvError(
            "prov's disk keeper did not say how big the home's file system is",
            "Its output: " + (" ".join(output.split())[-300:] or "none") + ".",
            "run `prov up` again; if it persists, pass --disk none and report it.",
        )
    return got


def _keeper_run(engine: Engine, image: str, volumes: str, args: list[str], action: str) -> str:
    """The script in the engine's disk keeper (made and started when missing)."""
    keeper = _keeper(engine, image, volumes)
    code, output = engine.exec_run(keeper, ["sh", "-c", script(), "prov-disk", *args])
    if code != 0:
        raise ProvError(
            f"prov's disk keeper could not {action}",
            f"It exited {code}: " + (" ".join(output.split())[-400:] or "no output") + ".",
            "see `docker logs prov-diskd`; the engine may refuse SYS_ADMIN or loop devices "
            "to containers (rootless Docker, some hosted engines).",
        )
    return output


# On every image with prov's SSH layer (docker/sshd/Dockerfile): what the
# keeper's script needs is there.
KEEPER_IMAGE_LABEL = "prov.ssh"


def keeper_image(present: list[dict[str, Any]]) -> str:
    """Of `present` (the engine's prov images, as Docker lists them), the
    newest with prov's SSH layer; "" when there is none."""
    fit = [i for i in present if (i.get("Labels") or {}).get(KEEPER_IMAGE_LABEL) == "1"]
    fit.sort(key=lambda i: int(i.get("Created") or 0), reverse=True)
    return str(fit[0]["Id"]) if fit else ""


def _keeper(engine: Engine, image: str, volumes: str) -> str:
    """The disk keeper's container ID, running; made from `image` if missing
    (or, when that image is gone, from another with prov's SSH layer: a home
    must be released even after its image was removed)."""
    info = engine.find(DISKD)
    if info is None:
        from provisioner.image import IMAGE_REPO

        labels = {LABEL_MANAGED: "true", LABEL_ROLE: DISKD_ROLE}
        if not image or engine.image_id(image) is None:
            image = keeper_image(engine.images(IMAGE_REPO))
        if not image:
            raise ProvError(
                "prov's disk keeper is not running and no prov image is left to make it from",
                "It mounts and unmounts the homes' own file systems; the image that made "
                "this one was removed, and no other image with prov's SSH layer is here.",
                "run `prov up` for any environment (it builds the image again), then retry.",
            )
        try:
            engine.create_named(DISKD, wire.diskd_body(image, volumes, labels))
        except ProvError:  # another `up` made it just now (409), or a real refusal
            if engine.find(DISKD) is None:
                raise
        info = engine.find(DISKD)
        if info is None:
            raise ProvError(
                "prov's disk keeper vanished as it was made",
                "Its container prov-diskd was created and then gone.",
                "run `prov up` again.",
            )
    if not info.running:
        engine.start(info.id)
    return info.id
