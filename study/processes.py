"""Who is working: a `host:pid` name for this process, and whether a named one has died.

Runs and trials carry that name so a later compare can tell work left behind by a dead
process (SIGKILL, crash) from work a live one, here or on another machine, is still doing.
"""

from __future__ import annotations

import os
import socket


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def died_here(host: str, pid: str | int) -> bool:
    """True only for a process of this host that no longer exists; another host's process
    may well be alive, so it never counts as dead."""
    if host != socket.gethostname() or not str(pid).isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    return False
