"""The home's own file system (homedisk), without a daemon: what the helper is
told, what its answer means, and what a home volume says of its bound."""

from __future__ import annotations

import subprocess

from provisioner import homedisk


def test_the_helpers_script_is_valid_sh_with_its_sizes_filled_in() -> None:
    script = homedisk.script()
    assert "SHARE_" not in script and "MAX_" not in script and "MIN_" not in script
    assert f"size=$((avail / {homedisk.SHARE} * 1024))" in script
    assert subprocess.run(["sh", "-n", "-c", script], check=False).returncode == 0
    # The image holds the agent's home: root's alone; mounted without setuid or devices.
    assert 'chmod 600 "$img.new"' in script and "nosuid,nodev" in script


def test_mount_arguments_and_the_home_volumes_options() -> None:
    assert homedisk.mount_args("/volumes/v/_data", None) == ["mount", "/volumes/v/_data", "auto"]
    assert homedisk.mount_args("/v", 300 << 20) == ["mount", "/v", str(300 << 20)]
    # The keeper binds Docker's volumes directory; a disk volume is a directory in it.
    assert homedisk.keeper_paths("/var/lib/docker/volumes/prov-x-disk/_data") == (
        "/var/lib/docker/volumes",
        "/volumes/prov-x-disk/_data",
    )
    assert homedisk.home_volume_options("/var/lib/docker/volumes/prov-x-disk/_data") == {
        "type": "none",
        "o": "bind",
        "device": "/var/lib/docker/volumes/prov-x-disk/_data/mnt",
    }
    assert homedisk.disk_volume_name("x") == "prov-x-disk"


def test_the_helpers_answer_is_its_last_size_line() -> None:
    assert homedisk.parse_size("mke2fs 1.47\nsize=12\nsize=314572800\n") == 314572800
    assert homedisk.parse_size("mount: failed\n") is None
    assert homedisk.parse_size("size=\n") is None


def test_a_home_volume_says_its_bound_by_label() -> None:
    assert homedisk.bound_of({"Labels": {homedisk.DISK_LABEL: "314572800"}}) == 314572800
    assert homedisk.bound_of({"Labels": {}}) == 0  # made before prov bounded homes
    assert homedisk.bound_of({"Labels": None}) == 0
    assert homedisk.bound_of({"Labels": {homedisk.DISK_LABEL: "junk"}}) == 0
    assert homedisk.bound_of(None) == 0
