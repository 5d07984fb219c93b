"""Run a command under the unit's syscall filter, without systemd as PID 1.

``SystemCallFilter=@system-service`` + ``SystemCallErrorNumber=EPERM`` is what the unit sets;
a build machine or container has no systemd to apply it. This installs the same allow-list
with libseccomp (through ctypes: no Python binding needed), calls outside it failing with
EPERM, then execs the command, so the daemon's real code paths (onnxruntime's thread pool,
SQLite, paho, PortAudio's initialisation) run under it. The group's members come from the
installed ``systemd-analyze syscall-filter``, i.e. from the systemd that would enforce it.

Usage: python tests/seccomp_filter.py [@group ...] -- COMMAND [ARG ...]
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Final

SCMP_ACT_ALLOW: Final = 0x7FFF0000
_SCMP_ACT_ERRNO_BASE: Final = 0x00050000
DEFAULT_GROUP: Final = "@system-service"


def available() -> str | None:
    """None if a filter can be installed here, else why not."""
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze not installed"
    if ctypes.util.find_library("seccomp") is None:
        return "libseccomp not installed"
    return None


def syscalls_of(groups: Iterable[str]) -> set[str]:
    """The syscall names in `groups`, nested groups expanded, as systemd-analyze lists them."""
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    members: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in listing.splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if not line[0].isspace():  # a group header, e.g. "@system-service"
            current = members.setdefault(text.split()[0], [])
        elif current is not None:
            current.append(text.split()[0])

    def expand(name: str, seen: frozenset[str]) -> set[str]:
        if name not in members:
            raise ValueError(f"unknown syscall group {name}")
        out: set[str] = set()
        for item in members[name]:
            if item.startswith("@"):
                if item not in seen:
                    out |= expand(item, seen | {item})
            else:
                out.add(item)
        return out

    result: set[str] = set()
    for group in groups:
        result |= expand(group, frozenset({group})) if group.startswith("@") else {group}
    return result


def install(allowed: Iterable[str], error_number: int = errno.EPERM) -> int:
    """Install the filter on this process (inherited across exec); returns rules added."""
    name = ctypes.util.find_library("seccomp")
    if name is None:
        raise OSError("libseccomp not found")
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.restype = ctypes.c_int
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.restype = ctypes.c_int
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(_SCMP_ACT_ERRNO_BASE | (error_number & 0xFFFF))
    if not ctx:
        raise OSError("seccomp_init failed")
    added = 0
    for syscall in sorted(allowed):
        number = lib.seccomp_syscall_resolve_name(syscall.encode())
        if number < 0:
            continue  # not a syscall of this architecture (e.g. a 32-bit-only time64 call)
        if lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, number, 0) == 0:
            added += 1
    # libseccomp sets no_new_privs itself, as NoNewPrivileges=yes does for the unit.
    rc = lib.seccomp_load(ctx)
    if rc != 0:
        raise OSError(-rc, f"seccomp_load failed: {os.strerror(-rc)}")
    return added


def main(argv: Sequence[str]) -> int:
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    split = list(argv).index("--")
    groups = list(argv[:split]) or [DEFAULT_GROUP]
    command = list(argv[split + 1 :])
    if not command:
        print("no command after --", file=sys.stderr)
        return 2
    install(syscalls_of(groups))
    os.execvp(command[0], command)  # noqa: S606 - exec is the point: the filter is inherited
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
