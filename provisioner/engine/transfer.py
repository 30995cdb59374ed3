"""Images copied from this machine's engine to another one, without a registry.

prov builds on this machine (its build context, CA files and caches are
here) and streams `docker save` of the image into `docker load` on the other
engine, through the SSH link's forwarded socket: nothing is written to disk
on either side and no registry is involved (none may be reachable, and an
implicit pull on the remote could fetch something else under the same
name). `docker load` keeps the image ID, so prov's content-hash tag plus an
ID comparison tells whether the other engine has it already.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from provisioner.engine.api import Engine
from provisioner.errors import BuildError

CHUNK = 1 << 20


def ensure_on(
    source: Engine, dest: Engine, ref: str, progress: Callable[[str], None]
) -> tuple[bool, float, int]:
    """Make `dest` hold `ref` with the image ID it has on `source`; (copied?,
    seconds, bytes)."""
    wanted = source.image_id(ref)
    if wanted is None:
        raise BuildError(
            f"The image {ref} is not on this machine's engine",
            "prov copies images from here to the remote engine.",
            "run `prov up` again (it builds the image first).",
        )
    if dest.image_id(ref) == wanted:
        return False, 0.0, 0
    here, there = source.info().get("Architecture"), dest.info().get("Architecture")
    if here and there and here != there:
        raise BuildError(
            f"The engine at {dest.target.host} runs on {there}, this machine on {here}",
            f"prov builds the image here and copies it there, and a {here} image does not run "
            f"on {there}.",
            "use an engine host of the same architecture as this machine, or run prov on a "
            f"{there} machine.",
        )
    started = time.monotonic()
    sent = [0]

    def chunks() -> Iterator[bytes]:
        last = 0.0
        for chunk in source.export_image(ref, CHUNK):
            sent[0] += len(chunk)
            now = time.monotonic()
            if now - last > 0.5:
                last = now
                progress(f"copying {ref} to {dest.target.host}: {sent[0] / 1e6:.0f} MB")
            yield chunk

    dest.load_image(chunks())
    got = dest.image_id(ref)
    if got != wanted:
        raise BuildError(
            f"Copying {ref} to {dest.target.host} did not give the same image",
            f"This machine has {wanted[:19]}, the remote engine now has {got or 'nothing'}.",
            "run `prov up` again; if it repeats, remove the image there "
            f"(`docker rmi {ref}` on that host).",
        )
    return True, time.monotonic() - started, sent[0]
