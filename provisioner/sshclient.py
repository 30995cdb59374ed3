"""Logging in with paramiko: a second SSH client, independent of OpenSSH.

`prov ssh-test` uses it to tell a server-side fault from a client-side one;
`prov up` does not (see ready.py).
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import paramiko

from provisioner.keys import PublicKey
from provisioner.plan import SshTarget
from provisioner.ready import Fatal, Transient

# paramiko logs every refused or banner-less attempt with a traceback from its
# transport thread; those are reported to the user as check results instead.
_paramiko_log = logging.getLogger("paramiko")
_paramiko_log.addHandler(logging.NullHandler())
_paramiko_log.propagate = False


def _load_private_key(identity: Path) -> paramiko.PKey | None:
    if identity.suffix == ".pub" or not identity.exists():
        return None
    try:
        return paramiko.PKey.from_path(str(identity))
    except paramiko.PasswordRequiredException:
        return None  # encrypted: the agent is the way in


def _client_for(target: SshTarget) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    key = paramiko.PKey.from_type_string(
        target.host_key.key_type, base64.b64decode(target.host_key.blob_b64)
    )
    # known_hosts names port 22 by the bare host, any other port as [host]:port.
    entry = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    client.get_host_keys().add(entry, target.host_key.key_type, key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def run_command(target: SshTarget, command: str, timeout: float = 10.0) -> tuple[int, str]:
    """Log in with the pinned host key and run `command`; (exit status, output)."""
    client = _client_for(target)
    pkey = _load_private_key(target.identity_file)
    try:
        client.connect(
            target.host,
            target.port,
            username=target.user,
            pkey=pkey,
            allow_agent=pkey is None,
            look_for_keys=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
        _stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
        output = stdout.read().decode(errors="replace") + stderr.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), output
    except paramiko.BadHostKeyException as exc:
        raise Fatal(
            f"the server presented host key {_fingerprint(exc.key)}, not the pinned "
            f"{target.host_key.fingerprint}: something else answers on port {target.port}"
        ) from exc
    except paramiko.AuthenticationException as exc:
        raise Fatal(f"key login as {target.user} was refused ({exc})") from exc
    except TimeoutError as exc:
        raise Transient("timed out waiting for the server") from exc
    except ConnectionRefusedError as exc:
        raise Transient("connection refused") from exc
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        raise Transient("connection refused") from exc
    except (paramiko.SSHException, EOFError, OSError) as exc:
        # Includes "Error reading SSH protocol banner": the proxy accepted
        # the connection but sshd is not listening yet.
        raise Transient(f"no SSH session yet ({exc or type(exc).__name__})") from exc
    finally:
        client.close()


def _fingerprint(key: paramiko.PKey) -> str:
    return PublicKey(key.get_name(), key.get_base64()).fingerprint
