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


def test_ls_reads_each_mounted_homes_use_and_its_size_from_one_keeper_answer() -> None:
    """`df` names the home's own mount point only where its file system is
    mounted; an unmounted one reports the disk it sits on and is left out, as is
    a home whose image `stat` did not see."""
    output = (
        "Filesystem 1024-blocks Used Available Capacity Mounted on\n"
        "/dev/loop3 292944 24580 261196 9% /volumes/prov-web-1-disk/_data/mnt\n"
        "/dev/sda1 60000000 30000000 30000000 50% /volumes\n"
        "/dev/loop4 292944 100 292000 1% /volumes/prov-no-image-disk/_data/mnt\n"
        "image /volumes/prov-web-1-disk/_data/home.img 314572800\n"
        "image /volumes/prov-down-disk/_data/home.img 314572800\n"
        "image /volumes/other/_data/home.img 1\n"
    )
    assert homedisk.parse_homes(output) == {"web-1": (24580 * 1024, 314572800)}
    assert homedisk.parse_homes("") == {}
    # The globs the keeper expands are the layout the unit above parses.
    assert "/volumes/prov-*-disk/_data/mnt" in homedisk.HOMES_SCRIPT
    assert "/volumes/prov-*-disk/_data/home.img" in homedisk.HOMES_SCRIPT


def test_the_keeper_is_made_from_the_newest_image_with_provs_ssh_layer() -> None:
    """When the image that made a home is gone, any image with prov's SSH layer
    can release it; the egress proxy's (prov-env too) cannot."""
    listed = [
        {"Id": "sha256:old", "Created": 100, "Labels": {"prov.ssh": "1", "prov.image": "1"}},
        {"Id": "sha256:new", "Created": 300, "Labels": {"prov.ssh": "1"}},
        {"Id": "sha256:egress", "Created": 900, "Labels": {"prov.image": "1"}},
        {"Id": "sha256:bare", "Created": 950, "Labels": None},
    ]
    assert homedisk.keeper_image(listed) == "sha256:new"
    assert homedisk.keeper_image(listed[2:]) == ""
    assert homedisk.keeper_image([]) == ""
