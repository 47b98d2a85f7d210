"""A GGUF file's header walked field by field before the ``gguf`` package reads it, so a damaged
file is one :class:`RopelabError` naming the damaged field (``metadata key 12 ('general.name'):
string length 1152921504606846976 runs past the end of the file``) instead of the reader's numpy
message (``index 0 is out of bounds``, ``cannot reshape``).

Layout (GGUF versions 2 and 3, little-endian; the ``gguf`` package's constants): magic, version,
tensor count, metadata count; each metadata entry a string key, a value type and a value (an array
holds an item type, a count and the items); each tensor entry a string name, a dimension count,
the dimensions, a ggml type and an offset into the data section, which starts at the next multiple
of ``general.alignment`` (default 32). Only sizes are read: strings and arrays of fixed-size items
are skipped by arithmetic, never decoded.
"""

from __future__ import annotations

import struct
from pathlib import Path

from ropelab.core.errors import RopelabError

#: a metadata value type's struct format (the fixed-size ones), by the gguf package's type number
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
#: the most dimensions a ggml tensor has
_MAX_DIMS = 4


class _Cursor:
    """Reads little-endian fields from the file's bytes, naming the field when the file ends."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.at = data, 0

    def left(self) -> int:
        return len(self.data) - self.at

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        if self.left() < size:
            raise RopelabError(f"{what}: the file ends there (truncated)")
        value = struct.unpack_from(fmt, self.data, self.at)[0]
        self.at += size
        return value

    def skip(self, size: int, what: str) -> None:
        if size > self.left():
            raise RopelabError(f"{what}: {size:,} bytes run past the end of the file ({self.left():,} left)")
        self.at += size

    def string(self, what: str) -> bytes:
        length = self.unpack("<Q", f"{what}: length")
        if length > self.left():
            raise RopelabError(
                f"{what}: string length {length:,} runs past the end of the file ({self.left():,} bytes left)"
            )
        text = bytes(self.data[self.at : self.at + length])
        self.at += length
        return text


def check_gguf_header(path: str | Path) -> None:
    """One :class:`RopelabError` naming the first damaged header field of a GGUF file; nothing
    when the header holds together (the ``gguf`` package then reads it)."""
    import gguf
    import numpy as np

    path = Path(path)
    with path.open("rb") as handle:
        try:
            data = memoryview(np.memmap(handle, dtype=np.uint8, mode="r"))
        except ValueError:  # an empty file cannot be mapped
            raise RopelabError(f"{path}: damaged GGUF header: the file is empty") from None
    cursor = _Cursor(data)
    try:
        _walk(cursor, gguf)
    except RopelabError as error:
        raise RopelabError(f"{path}: damaged GGUF header: {error}") from None


def _walk(cursor: _Cursor, gguf) -> None:
    if cursor.unpack("<I", "magic") != gguf.GGUF_MAGIC:
        raise RopelabError("magic: not 'GGUF' (not a GGUF file)")
    version = cursor.unpack("<I", "version")
    if version not in (2, 3):
        raise RopelabError(f"version: {version} (ropelab reads GGUF versions 2 and 3)")
    tensors = cursor.unpack("<Q", "tensor count")
    entries = cursor.unpack("<Q", "metadata count")
    if tensors == 0:
        raise RopelabError("tensor count: 0 (the file holds no weights)")
    if entries == 0:
        raise RopelabError("metadata count: 0 (no architecture, no hyperparameters)")
    smallest = 8 + 4 + 1  # a one-byte key and a one-byte value: more entries than that cannot fit
    if entries * smallest > cursor.left() or tensors * (8 + 1 + 4 + 8 + 4 + 8) > cursor.left():
        raise RopelabError(
            f"counts: {tensors:,} tensors and {entries:,} metadata entries do not fit in the file (truncated, or "
            "damaged counts)"
        )
    alignment = gguf.GGUF_DEFAULT_ALIGNMENT
    for index in range(entries):
        key = cursor.string(f"metadata key {index}").decode("utf-8", "replace")
        where = f"metadata key {index} ({key!r})"
        kind = cursor.unpack("<I", f"{where}: value type")
        value = _value(cursor, kind, where)
        if key == "general.alignment" and isinstance(value, int) and value > 0:
            alignment = value
    sizes = []
    for index in range(tensors):
        name = cursor.string(f"tensor {index}: name").decode("utf-8", "replace")
        where = f"tensor {index} ({name!r})"
        dims = cursor.unpack("<I", f"{where}: dimension count")
        if not 1 <= dims <= _MAX_DIMS:
            raise RopelabError(f"{where}: {dims} dimensions (1 to {_MAX_DIMS})")
        shape = [cursor.unpack("<Q", f"{where}: dimension {d}") for d in range(dims)]
        kind = cursor.unpack("<I", f"{where}: type")
        offset = cursor.unpack("<Q", f"{where}: offset")
        try:
            block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise RopelabError(f"{where}: unknown tensor type {kind}") from None
        count = 1
        for size in shape:
            count *= size
        if count == 0 or shape[0] % block:
            raise RopelabError(f"{where}: shape {shape} (empty, or rows not a multiple of {block})")
        sizes.append((where, offset, count // block * block_bytes))
    start = -(-cursor.at // alignment) * alignment
    room = len(cursor.data) - start
    for where, offset, size in sizes:
        if offset + size > room:
            raise RopelabError(
                f"{where}: its {size:,} bytes at offset {offset:,} run past the end of the file (truncated)"
            )


def _value(cursor: _Cursor, kind: int, where: str):
    """Read (scalars, for general.alignment) or skip one metadata value."""
    if kind in _SCALARS:
        return cursor.unpack(_SCALARS[kind], where)
    if kind == _STRING:
        cursor.string(where)
        return None
    if kind != _ARRAY:
        raise RopelabError(f"{where}: unknown value type {kind}")
    item = cursor.unpack("<I", f"{where}: array item type")
    count = cursor.unpack("<Q", f"{where}: array length")
    if item in _SCALARS:
        cursor.skip(count * struct.calcsize(_SCALARS[item]), f"{where}: array of {count:,} items")
    elif item == _STRING:
        if count * 8 > cursor.left():
            raise RopelabError(f"{where}: array length {count:,} runs past the end of the file")
        for i in range(count):
            cursor.string(f"{where}: item {i}")
    else:
        raise RopelabError(f"{where}: array item type {item} (arrays hold scalars or strings)")
    return None
