"""The one check that a name a client sends (`rlm serve`'s `context.files`, `rlm mcp`'s `paths`)
is a real path under the server's root: symlinks (the entry's own too) and `..` resolved first, then
compared by path parts, never as strings (`root-secret/` is not under `root/`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ContextError

MAX_NAME_CHARS = 4096  # a whole name (PATH_MAX); each part at most 255 bytes (NAME_MAX)
MAX_PART_BYTES = 255


def path_under_root(root: Path, name: str, *, root_called: str, subject: str = "") -> Path:
    """`name` as a real path under `root` (resolved), or ContextError saying why not. The messages
    say `{subject}{name!r}` and call the root `root_called` (each front end's words for them)."""
    if not isinstance(name, str):
        raise ContextError(f"{subject}{type(name).__name__} is not a usable path (give a name, as a string)")
    shown = subject + repr(name if len(name) <= 80 else name[:80] + "...")
    if "\x00" in name:
        raise ContextError(f"{shown} contains a NUL byte (it is not a usable path)")
    if len(name) > MAX_NAME_CHARS or any(len(part.encode("utf-8", "surrogatepass")) > MAX_PART_BYTES
                                         for part in name.split("/")):
        raise ContextError(f"{shown} is too long a name ({len(name):,} characters; at most {MAX_NAME_CHARS:,}, "
                           f"and {MAX_PART_BYTES} bytes per part)")
    if Path(name).is_absolute():
        raise ContextError(f"{shown} is outside {root_called} (give it relative to the root)")
    try:
        candidate = (root / name).resolve()  # follows every symlink on the way, the entry's own too
        if candidate != root and root not in candidate.parents:
            link = " (it is a symlink that leads out of it)" if _is_symlink(root / name) else ""
            raise ContextError(f"{shown} is outside {root_called}{link}; only files under it can be read")
        if not candidate.exists():
            raise ContextError(f"{shown} does not exist under {root_called}")
    except (OSError, ValueError, UnicodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise ContextError(f"{shown} cannot be used: {reason}") from None
    return candidate


def _is_symlink(path: Path) -> bool:
    try:
        return path.is_symlink()
    except (OSError, ValueError):
        return False
