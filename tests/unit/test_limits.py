"""Default limits sized from the engine host, `--memory`/`--cpus` parsing
(`none` by name), and the limits in words (limits.py, config.py)."""

from __future__ import annotations

import pytest

from provisioner import limits
from provisioner.config import Containment, parse_cpus, parse_memory, parse_net
from provisioner.errors import UsageError

HOST = limits.HostSize(memory=24 << 30, cpus=2, driver="overlay2", backing="extfs")


def test_defaults_take_half_the_host() -> None:
    """Half the memory (whole MiB) and half the CPUs, at least one."""
    resolved = limits.resolve(Containment(), HOST)
    assert resolved.memory == 12 << 30 and resolved.cpus == 1.0
    one_cpu = limits.HostSize(memory=(1 << 30) + 12345, cpus=1)
    small = limits.resolve(Containment(), one_cpu)
    assert small.memory == 512 << 20 and small.cpus == 1.0
    assert limits.resolve(Containment(), limits.HostSize(64 << 30, 16)).cpus == 8.0


def test_what_the_user_asked_wins_and_none_stays_none() -> None:
    asked = limits.resolve(Containment(memory=2 << 30, cpus=0.5), HOST)
    assert (asked.memory, asked.cpus) == (2 << 30, 0.5)
    lifted = limits.resolve(Containment(memory=0, cpus=0.0), HOST)
    assert (lifted.memory, lifted.cpus) == (0, 0.0)


def test_parsing_memory_and_cpus() -> None:
    assert parse_memory("2g") == 2 << 30 and parse_memory("512m") == 512 << 20
    assert parse_memory("none") == 0 and parse_memory("None") == 0
    assert parse_cpus("1.5") == 1.5 and parse_cpus("none") == 0.0 and parse_cpus(2.0) == 2.0
    for bad in ("1m", "lots", "-1g"):
        with pytest.raises(UsageError, match="--memory"):
            parse_memory(bad)
    for text in ("0", "many", "2000"):
        with pytest.raises(UsageError, match=f"Invalid --cpus {text}"):
            parse_cpus(text)


def test_parsing_allow_net() -> None:
    """A range or one address, normalised; anything else is refused naming the option."""
    assert parse_net("10.20.0.5/16") == "10.20.0.0/16"
    assert parse_net(" 169.254.169.254 ") == "169.254.169.254/32"
    assert parse_net("fd00::/8") == "fd00::/8"
    for bad in ("example.com", "10.0.0.0/33", ""):
        with pytest.raises(UsageError, match="--allow-net"):
            parse_net(bad)


def test_host_size_from_docker_info() -> None:
    info = {
        "NCPU": 2,
        "MemTotal": 25276071936,
        "Driver": "overlay2",
        "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]],
    }
    assert limits.HostSize.from_info(info) == limits.HostSize(25276071936, 2, "overlay2", "extfs")
    empty = limits.HostSize.from_info({})
    assert (empty.memory, empty.cpus) == (limits.FALLBACK_MEMORY, limits.FALLBACK_CPUS)


def test_memory_in_use_against_the_labels_limit() -> None:
    assert limits.label_memory("pids=4096,memory=536870912,cpus=1") == 512 << 20
    assert limits.label_memory("pids=4096,memory=none,cpus=none") == 0
    assert limits.label_memory("pids=4096") == 0
    assert limits.use_text(100 << 20, 512 << 20) == "100 MiB of 512 MiB"
    assert limits.use_text(3 << 30, 0) == "3.0 GiB (no limit)"


def test_limits_in_words_from_the_label() -> None:
    assert limits.label_words("pids=4096,memory=12884901888,cpus=1") == (
        "memory 12.0 GiB, 1 CPU, 4096 processes"
    )
    assert limits.label_words("pids=64,memory=none,cpus=none") == (
        "memory: none, CPUs: none, 64 processes"
    )
    # Made before prov sized defaults: no memory or CPU limit.
    assert limits.label_words("pids=4096") == "memory: none, CPUs: none, 4096 processes"
    assert limits.label_words("pids=4096,memory=536870912,cpus=0.5") == (
        "memory 512 MiB, 0.5 CPUs, 4096 processes"
    )


def test_disk_use_in_words() -> None:
    assert limits.disk_use_text(5 << 20, 3 << 30) == (
        "in use: home 5 MiB (not bounded), container layer 3.0 GiB"
    )
    assert limits.disk_use_text(5 << 20, 0, 300 << 20) == (
        "in use: home 5 MiB of 300 MiB, container layer 0 MiB"
    )
    assert (
        limits.disk_use_text(None, 0) == "in use: home unknown (not bounded), container layer 0 MiB"
    )


def test_what_bounds_the_disk_in_words() -> None:
    assert limits.disk_text(20 << 30, "", False, 1 << 30) == (
        "home: a file system of its own, 20.0 GiB; /tmp, /var/tmp: 1.0 GiB each, in memory"
    )
    assert limits.disk_text(0, "as asked (--disk none)", True, 1 << 30) == (
        "home: not bounded (as asked (--disk none)), it grows on the engine host's disk; "
        "the rest: --sudo's root may write anywhere in the container's layer (not bounded)"
    )


def test_layer_taken_text_names_what_the_first_start_took_back() -> None:
    record = "1000:1000\n/home/node\n/opt/odd name \n/opt/shared\n/opt/team\n"
    said = limits.layer_taken_text(record)
    assert said.startswith("container layer: 4 paths the image let the agent's UID write")
    assert "(/home/node, /opt/odd name , /opt/shared, ...)" in said
    assert "(/x)" in limits.layer_taken_text("1000:1000\n/x\n")
    assert "1 path the image" in limits.layer_taken_text("1000:1000\n/x\n")


def test_layer_taken_text_is_silent_when_nothing_was_taken() -> None:
    assert limits.layer_taken_text("1000:1000\n\n") == ""
    assert limits.layer_taken_text("") == ""
