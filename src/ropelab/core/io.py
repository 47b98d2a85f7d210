"""Files and directories every part of ropelab writes: atomic writes, the home directory, output
directories checked before work, JSON files read with one clear error when damaged."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ropelab.core.errors import RopelabError


def ropelab_home() -> Path:
    """Where converted models and tokenized data are cached: ``$ROPELAB_HOME``, else ``~/.cache/ropelab``."""
    raw = os.environ.get("ROPELAB_HOME") or "~/.cache/ropelab"
    try:
        return Path(raw).expanduser()
    except RuntimeError:  # "~someone" of no such user, or no home directory to expand "~" to
        raise RopelabError(f"ROPELAB_HOME={raw!r}: its '~' cannot be expanded; give a full path") from None


def current_umask() -> int:
    """The process's file mode creation mask, read without changing it where possible.

    Linux (>= 4.7) reports it as the ``Umask:`` line of ``/proc/self/status`` (proc(5)); elsewhere
    the only portable way is to set it and restore it (umask(2)), which briefly affects other threads.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 minus the umask (POSIX open(2))."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it into place.

    ``tempfile.mkstemp`` creates the temporary file with mode 0o600 (and a writer may replace it with
    its own, e.g. safetensors' ``save_file``), so once written it gets the mode a plain
    ``open(path, "w")`` would give (0o666 & ~umask): outputs stay readable to whoever the user's
    umask allows. The parent directories get ``mkdir``'s usual 0o777 & ~umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_file_mode())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def file_sha256(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """The hex sha256 of a file, read in blocks (checkpoint weights, model wheels' data files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_out_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """An output directory that can be created or reused, checked before any work: one
    :class:`RopelabError` when it (or a folder above it) is a file, or cannot be written."""
    path = Path(path).expanduser()
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is" if folder == path else f"lies under {folder}, which is"
                raise RopelabError(f"{option} {path}: {where} a file, not a directory")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise RopelabError(f"{option} {path}: {folder} is not writable")
            break
    return path


def read_json_file(path: str | os.PathLike, what: str, kind: type = dict):
    """The JSON value of ``path`` (a ``kind``), or one :class:`RopelabError` naming the damage:
    unreadable, not UTF-8, empty, truncated or malformed JSON, or another type of value."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise RopelabError(f"{path}: {what} cannot be read ({error.strerror})") from None
    except UnicodeDecodeError:
        raise RopelabError(f"{path}: {what} is damaged (not UTF-8 text)") from None
    if not text.strip():
        raise RopelabError(f"{path}: {what} is empty (damaged)")
    try:
        value = json.loads(text)
    except ValueError as error:
        raise RopelabError(f"{path}: {what} is damaged (not JSON: {error})") from None
    if not isinstance(value, kind):
        names = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
        found = "null" if value is None else names.get(type(value), type(value).__name__)
        raise RopelabError(f"{path}: {what} is damaged (a JSON {found}, not an {names.get(kind, kind.__name__)})")
    return value


def saved_settings(path: str | os.PathLike, what: str, differing: Callable[[dict], list[str]]) -> dict | None:
    """The JSON record at ``path`` when it belongs to the same run (to resume it), None when there is
    none. One :class:`RopelabError` when the record is damaged, or when ``differing(record)`` names
    settings that differ from the run asked for (the settings are listed)."""
    path = Path(path)
    if not path.exists():
        return None
    advice = "choose another --out directory, or remove this one"
    try:
        saved = read_json_file(path, f"the {what}'s configuration")
        changed = differing(saved)
    except RopelabError as error:
        raise RopelabError(f"{error}; {advice}") from None
    except (KeyError, TypeError, ValueError) as error:
        raise RopelabError(f"{path}: the {what}'s configuration is damaged ({error}); {advice}") from None
    if changed:
        raise RopelabError(
            f"{path.parent} holds a {what} with other settings ({', '.join(changed)} differ); choose another --out "
            "directory, or the same settings to resume it"
        )
    return saved


def differing_keys(asked: dict, saved: object) -> list[str]:
    """The keys whose values differ between two settings dicts (a missing key differs)."""
    if not isinstance(saved, dict):
        raise TypeError(f"expected an object, got {type(saved).__name__}")
    return sorted(key for key in asked.keys() | saved.keys() if asked.get(key) != saved.get(key))
