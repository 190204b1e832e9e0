"""What the daemon asks of glibc's malloc, through ctypes, on a machine with little memory.

Both calls do nothing with another C library (musl has neither function).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Mapping
from typing import Any

M_ARENA_MAX = -8    # glibc's mallopt() parameter number (malloc.h)
MALLOC_ARENAS = 2   # as the systemd units set MALLOC_ARENA_MAX


def limit_malloc_arenas(environ: Mapping[str, str] | None = None) -> bool:
    """Cap glibc's malloc arenas at MALLOC_ARENAS for runs outside the units; True if done.

    glibc gives each thread that allocates while another does an arena of its own (64 MiB
    of address space on 64-bit): 64 chat threads took the daemon to 1 GB of VmSize, on a
    32-bit Pi half of what it can address. Call it before any thread starts. A
    MALLOC_ARENA_MAX in the environment (the units set it) is left to glibc.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    if "MALLOC_ARENA_MAX" in env:
        return False
    mallopt = _libc("mallopt")
    return mallopt is not None and mallopt(M_ARENA_MAX, MALLOC_ARENAS) == 1


def release_freed_memory() -> bool:
    """Give the memory start-up (or pruning) used and freed back to the system; True if done.

    Loading a bot parses YAML and compiles templates; the garbage is freed, but glibc keeps
    the pages for the process. malloc_trim returns them (0.8 MB of an idle YAML bot's 33 MB
    here).
    """
    gc.collect()
    trim = _libc("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


def _libc(name: str) -> Callable[..., Any] | None:
    """The C library's function `name`, or None where there is no such function."""
    try:
        import ctypes  # only when called: ctypes is 0.35 MB resident
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
