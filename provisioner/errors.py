"""Every failure a user can hit, as one exception family.

Each error carries three parts that the CLI prints as one paragraph: what
failed, what was seen, and a hint saying what to do. Messages never contain
key material.
"""

from __future__ import annotations

# Exit codes that are no error paragraph: the user answered no to a question
# (nothing was done), a check found a failure it listed itself, and Ctrl-C (as
# a shell reports SIGINT).
EXIT_DECLINED = 1
EXIT_CHECK_FAILED = 1
EXIT_INTERRUPTED = 130


class ProvError(Exception):
    """Base of all errors prov reports to the user."""

    exit_code = 1

    def __init__(self, what: str, seen: str = "", hint: str = "", log_tail: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.seen = seen
        self.hint = hint
        self.log_tail = log_tail  # last lines of a build or container log, shown below

    def paragraph(self) -> str:
        parts = [self.what.rstrip(".") + "."]
        if self.seen:
            parts.append(self.seen.rstrip())
        if self.hint:
            parts.append("Hint: " + self.hint)
        return " ".join(parts)


class UsageError(ProvError):
    """The request itself is invalid (bad name, bad port, bad flag value)."""

    exit_code = 2


class ConfigError(UsageError):
    """Input files the user pointed at are missing or malformed."""


class DockerUnavailable(ProvError):
    exit_code = 3


class ConflictError(ProvError):
    """Something already exists that prov must not touch (name, port)."""

    exit_code = 4


class BuildError(ProvError):
    exit_code = 5


class NotReady(ProvError):
    """The container started but SSH never became usable."""

    exit_code = 6


class NotFound(ProvError):
    exit_code = 7


class HandoffError(ProvError):
    exit_code = 8


class CheckFailed(ProvError):
    """`prov ssh-test` found an environment that does not work."""

    exit_code = 9


class CommandFailed(ProvError):
    """A command the project asks for (devcontainer.json's lifecycle commands)
    exited non-zero inside the environment."""

    exit_code = 10
