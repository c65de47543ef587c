"""Folders and files only this tool's user may touch, never reached through a symlink.

log_dir and state_dir may sit in a shared place: a planted symlink or a group-writable folder
would let another user redirect, read or delete what the tool writes.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import constants as C


class UnsafePath(Exception):
    """A tool folder or file is a symlink, or a folder others may write and we cannot tighten."""


def private_dir(path: Path) -> None:
    """Create `path` owner-only, or check an existing one: a symlink is refused, a group- or
    world-writable folder we own is tightened to 0700, one owned by someone else refused."""
    if path.is_symlink():
        raise UnsafePath(f"{path} is a symlink; point the setting at the real folder")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"{path} is not a folder")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        if info.st_uid != os.geteuid():
            raise UnsafePath(f"{path} is writable by others and not ours to tighten; make it owner-only (chmod 700)")
        os.chmod(path, 0o700)


def open_private(path: Path, flags: int) -> int:
    """os.open owner-only, refusing a symlink at `path` itself (O_NOFOLLOW)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, 0o600)
    except OSError:
        if path.is_symlink():
            raise UnsafePath(f"{path} is a symlink; remove it") from None
        raise


def is_tool_file(path: Path) -> bool:
    """A regular file (not a symlink) whose name carries this tool's prefix."""
    return path.name.startswith(C.LOG_FILE_PREFIX) and stat.S_ISREG(path.lstat().st_mode)
