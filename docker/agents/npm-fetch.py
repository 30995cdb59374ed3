#!/usr/bin/env python3
"""Fetch one package tarball from an npm registry, as `npm pack NAME@RANGE` would,
without npm: used to get Node itself (node-linux-ARCH) and npm into the image
without installing Debian's nodejs and npm first (that took ~25 s of a ~55 s
agent layer).

    npm-fetch.py REGISTRY_URL NAME RANGE OUTDIR

RANGE is a version prefix: "22" (newest 22.x.y), "10.9" or an exact "22.12.0";
prereleases are never chosen. The tarball's integrity (sha512, else sha1) is
checked against the registry's metadata before it is written to OUTDIR as
NAME-VERSION.tgz (as npm pack names it). Exit status 2 when the registry has
no matching version, 1 on any other failure.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import urllib.parse
import urllib.request
from pathlib import Path

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")  # releases only


def _get(url: str, accept: str) -> bytes:
    if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    request = urllib.request.Request(url, headers={"Accept": accept})  # noqa: S310 - checked
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - checked
        data: bytes = response.read()
        return data


def choose(versions: list[str], wanted: str) -> str | None:
    prefix = tuple(int(p) for p in wanted.split("."))
    matching = []
    for version in versions:
        found = _VERSION.match(version)
        if found:
            numbers = tuple(int(p) for p in found.groups())
            if numbers[: len(prefix)] == prefix:
                matching.append((numbers, version))
    return max(matching)[1] if matching else None


def verify(data: bytes, dist: dict[str, str]) -> None:
    integrity = dist.get("integrity", "")
    if integrity.startswith("sha512-"):
        digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
        if digest != integrity[len("sha512-") :]:
            raise ValueError("sha512 integrity does not match the registry's")
    elif dist.get("shasum"):
        if hashlib.sha1(data).hexdigest() != dist["shasum"]:  # noqa: S324 - npm's own check
            raise ValueError("sha1 shasum does not match the registry's")
    else:
        raise ValueError("the registry gives no checksum for it")


def main() -> int:
    registry, name, wanted, outdir = sys.argv[1:5]
    if not re.fullmatch(r"\d+(\.\d+){0,2}", wanted):
        print(f"npm-fetch: {wanted!r} is not a version prefix", file=sys.stderr)
        return 2
    base = registry.rstrip("/") + "/"
    meta = json.loads(
        _get(base + urllib.parse.quote(name, safe="@"), "application/vnd.npm.install-v1+json")
    )
    version = choose(list(meta.get("versions", {})), wanted)
    if version is None:
        print(f"npm-fetch: no release of {name} matches {wanted}", file=sys.stderr)
        return 2
    dist = meta["versions"][version]["dist"]
    data = _get(dist["tarball"], "application/octet-stream")
    verify(data, dist)
    target = Path(outdir) / f"{name.replace('/', '-').lstrip('@')}-{version}.tgz"
    target.write_bytes(data)
    print(f"npm-fetch: {name}@{version} ({len(data) // 1_000_000} MB)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # one line, not a traceback, in the build log
        print(f"npm-fetch: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
