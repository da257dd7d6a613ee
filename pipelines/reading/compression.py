"""Compressed inputs: which codec a file name says, and decompression that keeps what
it read before a break.

A truncated or corrupt .gz / .zst / .bz2 / .xz file gives its text up to the break and
says where it broke, so a reader keeps the lines before it and reports the rest as lost.
(zstandard's stream reader returns a short read at a truncated frame without raising;
the frame's end marker is what tells a whole file from a cut one, so it is checked here.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def decompress(raw: bytes, codec: str | None) -> tuple[bytes, str | None]:
    """`raw` decompressed, and None; or what decompressed before a break, and why it broke.

    Streams (frames) back to back are all read, as gzip and zstd tools write them.
    """
    if codec is None:
        return raw, None
    out = bytearray()
    pos, n = 0, len(raw)
    while pos < n:
        if not raw[pos:].strip(b"\0"):
            break  # zero padding after the last stream (tape-style writers)
        d = _DECOMPRESSORS[codec]()
        while not d.eof:
            if pos >= n:
                return bytes(out), f"the {codec} data ends before its end marker: the file is truncated"
            chunk = raw[pos : pos + _CHUNK]
            pos += len(chunk)
            try:
                out += d.decompress(chunk)
            except Exception as exc:  # noqa: BLE001 - each codec raises its own error type
                return bytes(out), f"the {codec} data is corrupt ({type(exc).__name__}: {exc})"
        pos -= len(d.unused_data)
    return bytes(out), None
