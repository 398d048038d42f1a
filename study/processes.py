"""Who is working: a `host:pid` name for this process, and whether a named one has died.

Runs and trials carry that name so a later compare can tell work left behind by a dead
process (SIGKILL, crash) from work a live one, here or on another machine, is still doing.
The host part is the host name plus a short hash of the boot and the pid namespace: two
containers (or machines) with one host name never take each other's pids for their own.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from pathlib import Path


@functools.cache
def this_host() -> str:
    """`hostname@hash`: the hash (8 hex digits) of this boot's id and this pid namespace's
    inode, the two things a pid is unique within; without /proc, the host name alone."""
    parts = []
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: str(os.stat("/proc/self/ns/pid").st_ino)):
        try:
            parts.append(read())
        except OSError:
            parts.append("")
    if not any(parts):
        return socket.gethostname()
    return f"{socket.gethostname()}@{hashlib.sha256(':'.join(parts).encode()).hexdigest()[:8]}"


def this_process() -> str:
    return f"{this_host()}:{os.getpid()}"


def died_here(host: str, pid: str | int) -> bool:
    """True only for a process of this host (this boot, this pid namespace) that no longer
    exists; another host's process may well be alive, so it never counts as dead, and nor
    does one named the old way (the host name alone: which container it ran in is unknown)."""
    if host != this_host() or not str(pid).isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    return False
