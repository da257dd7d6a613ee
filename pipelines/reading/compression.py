"""Compressed inputs: which codec a file name says, and decompression that keeps what
it read before a break.

A truncated or corrupt .gz / .zst / .bz2 / .xz file gives its text up to the break and
says where it broke, so a reader keeps the lines before it and reports the rest as lost.
Files are decompressed as a stream (Decompressed) and split into lines as they come
(lines): a JSONL or text file of any size is read in bounded memory.
(zstandard's stream reader returns a short read at a truncated frame without raising;
the frame's end marker is what tells a whole file from a cut one, so it is checked here.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

# name ending -> (codec, the package that provides it when the standard library does not)
CODECS: dict[str, tuple[str, str | None]] = {
    ".gz": ("gzip", None), ".bz2": ("bz2", None), ".xz": ("xz", None), ".zst": ("zstd", "zstandard"),
}
_CHUNK = 1 << 20  # compressed bytes fed at a time: what is decoded before a break is kept


class MissingCodecError(ValueError):
    """A compressed file whose codec this Python cannot decompress."""


def _gzip() -> Any:
    import zlib

    return zlib.decompressobj(wbits=31)  # 31: a gzip header and trailer


def _bz2() -> Any:
    import bz2

    return bz2.BZ2Decompressor()


def _xz() -> Any:
    import lzma

    return lzma.LZMADecompressor()


def _zstd() -> Any:
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj()


# Each makes one decompressor with decompress(), eof and unused_data (one stream or
# frame; a file may hold several back to back).
_DECOMPRESSORS: dict[str, Callable[[], Any]] = {"gzip": _gzip, "bz2": _bz2, "xz": _xz, "zstd": _zstd}


def compression_of(uri: str) -> str | None:
    """The codec a file name says (None: not compressed), or MissingCodecError naming
    the package to install."""
    lower = uri.lower()
    for suffix, (codec, package) in CODECS.items():
        if not lower.endswith(suffix):
            continue
        try:
            _DECOMPRESSORS[codec]()
        except ImportError:
            fix = (f"pip install {package}" if package else
                   f"use a Python built with the {codec} module, or decompress the file first")
            raise MissingCodecError(f"{uri} is {codec}-compressed ({suffix}), and this Python cannot "
                                    f"decompress {codec}: {fix}") from None
        return codec
    return None


class Decompressed:
    """The bytes of a file object, decompressed by `codec` (None: as they are), a chunk at
    a time: iterate it. Memory holds one compressed chunk and what it decodes to, never
    the file. Streams (frames) back to back are all read, as gzip and zstd tools write
    them, and zero padding after the last one (tape-style writers) is passed over.

    Once iterated: `broken` is why the data stopped before its end (None: it read
    whole), `read` the compressed bytes read and `decoded` the bytes given out.
    """

    def __init__(self, f: BinaryIO, codec: str | None, *, chunk: int = _CHUNK) -> None:
        self._f, self.codec, self._chunk = f, codec, chunk
        self.broken: str | None = None
        self.read = 0
        self.decoded = 0

    def _raw(self) -> bytes:
        data = self._f.read(self._chunk)
        self.read += len(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        if self.codec is None:
            while data := self._raw():
                self.decoded += len(data)
                yield data
            return
        codec, pending, d = self.codec, b"", None
        while True:
            if not pending:
                pending = self._raw()
                if not pending:
                    if d is not None:
                        self.broken = f"the {codec} data ends before its end marker: the file is truncated"
                    return
            if d is None:  # a stream starts here, unless only zero padding is left
                pending = pending.lstrip(b"\0")
                if not pending:
                    continue
                d = _DECOMPRESSORS[codec]()
            try:
                out = d.decompress(pending)
            except Exception as exc:  # noqa: BLE001 - each codec raises its own error type
                self.broken = f"the {codec} data is corrupt ({type(exc).__name__}: {exc})"
                return
            pending = b""
            if d.eof:
                pending, d = d.unused_data, None
            if out:
                self.decoded += len(out)
                yield out


def lines(chunks: Iterable[bytes], *, complete: Callable[[], bool]) -> Iterator[bytes]:
    """The lines of a text given as chunks, as `bytes.splitlines` of the whole text
    would give them (\\n, \\r\\n and \\r end a line), without holding the text. The text
    after the last line end is a last line when `complete()` says, once the chunks are
    done, that the text read whole; else it is the cut-short end of a broken file and
    is left out."""
    held: list[bytes] = []  # the current line's pieces so far (a long line spans chunks)
    for chunk in chunks:
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            held.append(chunk)
            continue
        if held:
            held.append(parts[0])
            parts[0], held = b"".join(held), []
        last = parts.pop()
        if last:
            held.append(last)
        for part in parts:
            if part:
                yield from part.splitlines()  # "a\r" -> a; a bare \r inside ends a line too
            else:
                yield b""
    tail = b"".join(held)
    if tail and complete():
        yield from tail.splitlines()
