"""JSONL and text-line files are read as a stream: lines as they decompress, rows in
tables as they fill, never the file whole in memory."""

from __future__ import annotations

import gzip
import io
import json
import random
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from pipelines.reading import ReaderOptions, Shard, iter_shard, read_shard
from pipelines.reading.compression import Decompressed, lines


@pytest.mark.parametrize("seed", range(6))
def test_lines_from_chunks_equal_splitlines_of_the_whole_text(seed) -> None:
    """Any chunking, line ends split between chunks (\\r | \\n), blank lines, bare \\r, a
    long line over many chunks, a last line with or without its end."""
    rng = random.Random(seed)
    pieces = [b"a", b"bc", b"\n", b"\r\n", b"\r", b"", b"\n\n", b"x" * 300, b"{\"k\": 1}", b" "]
    text = b"".join(rng.choice(pieces) for _ in range(400))
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, 40)))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert list(lines(chunks, complete=lambda: True)) == text.splitlines()
        # a broken text: what follows the last line end is the cut-short part, left out
        assert list(lines(chunks, complete=lambda: False)) == text[: text.rfind(b"\n") + 1].splitlines()


def test_decompressed_streams_back_to_back_padding_and_a_cut() -> None:
    data = b"".join(f"line {i}\n".encode() for i in range(5000))
    packed = gzip.compress(data)
    two = Decompressed(io.BytesIO(packed + packed + b"\0" * 700), "gzip", chunk=4096)
    assert b"".join(two) == data + data and two.broken is None
    cut = Decompressed(io.BytesIO(packed[: len(packed) // 2]), "gzip", chunk=4096)
    got = b"".join(cut)
    assert 0 < len(got) < len(data) and data.startswith(got) and "truncated" in cut.broken
    bad = Decompressed(io.BytesIO(b"this is not gzip at all"), "gzip")
    assert b"".join(bad) == b"" and "corrupt" in bad.broken and bad.read > 0 and bad.decoded == 0
    zst = Decompressed(io.BytesIO(zstandard.ZstdCompressor().compress(data)), "zstd", chunk=1000)
    assert b"".join(zst) == data and zst.broken is None


def _big_jsonl(path: Path, *, rows: int, text_bytes: int) -> bytes:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    body = b"".join(
        json.dumps({"id": f"doc-{i}", "text": " ".join(rng.choice(words) for _ in range(text_bytes // 5))}).encode()
        + b"\n" for i in range(rows)
    )
    path.write_bytes(gzip.compress(body, compresslevel=1) if path.name.endswith(".gz") else body)
    return body


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_a_large_jsonl_file_is_read_in_bounded_memory(tmp_path, name) -> None:
    """A 64 MB JSONL file (plain and gzip): the read's peak Python memory stays under 48
    MB while its tables are consumed one by one (reading it whole held the raw bytes,
    the decompressed text and its list of lines: over 130 MB), and every row is read in
    order with its id and text."""
    body = _big_jsonl(tmp_path / name, rows=640, text_bytes=100_000)
    assert len(body) > 64 * 10**6
    opts = ReaderOptions(format="jsonl", root=str(tmp_path), input_column="text", id_column="id")
    ids: list[str] = []
    tracemalloc.start()
    try:
        for table in iter_shard(Shard(files=(str(tmp_path / name),)), opts):
            ids += table.column("id").to_pylist()
            assert table.column("error_cause").to_pylist() == [""] * table.num_rows
            del table
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ids == [f"doc-{i}" for i in range(640)]
    assert peak < 48 * 10**6, f"peak {peak / 1e6:.0f} MB while reading a {len(body) / 1e6:.0f} MB file"


def test_text_lines_stream_with_the_same_ids_as_before(tmp_path) -> None:
    """Line numbers count blank lines (ids '<file>#<line>'), across chunk boundaries and
    CRLF line ends; a truncated .gz keeps the lines before the break, then one
    truncated_file row."""
    text = b"".join((f"paragraph {i}\r\n" if i % 3 else "\r\n").encode() for i in range(3000))
    (tmp_path / "notes.txt").write_bytes(text)
    opts = ReaderOptions(format="text_lines", root=str(tmp_path))
    rows = read_shard(Shard(files=(str(tmp_path / "notes.txt"),)), opts).to_pylist()
    want = [(i, f"paragraph {i}".encode()) for i in range(3000) if i % 3]
    assert [(r["id"], r["payload"]) for r in rows] == [(f"notes.txt#{i}", p) for i, p in want]
    packed = gzip.compress(text)
    (tmp_path / "cut.txt.gz").write_bytes(packed[: len(packed) * 2 // 3])
    rows = read_shard(Shard(files=(str(tmp_path / "cut.txt.gz"),)), opts).to_pylist()
    ok, (broken,) = rows[:-1], rows[-1:]
    assert 0 < len(ok) < len(want) and [(r["id"], r["payload"]) for r in ok] == [
        (f"cut.txt.gz#{i}", p) for i, p in want[: len(ok)]]
    assert broken["error_cause"] == "truncated_file" and broken["id"] == "cut.txt.gz#file"


def test_jsonl_rows_are_numbered_by_line_and_a_utf8_bom_is_no_text(tmp_path) -> None:
    """'<file>#<n>' ids and source_row count every line (blank ones too), as text_lines
    does, so an error row points at the line an editor shows (n + 1); a bad line's
    message quotes its start; a UTF-8 byte order mark (Windows tools) is not part of the
    first record, in JSONL, text lines and text files alike."""
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.jsonl").write_bytes(bom + b'{"text": "first"}\n\n   \n{"text": "caf\xe9"}\n{"text": [1]}\n'
                                       b'{"text": "last"\n{"text": "ok"}\n')
    rows = read_shard(Shard(files=(str(tmp_path / "a.jsonl"),)),
                      ReaderOptions(format="jsonl", root=str(tmp_path), input_column="text")).to_pylist()
    assert [(r["id"], r["source_row"], r["error_cause"]) for r in rows] == [
        ("a.jsonl#0", 0, ""), ("a.jsonl#3", 3, "not_utf8"), ("a.jsonl#4", 4, "wrong_type"),
        ("a.jsonl#5", 5, "bad_json"), ("a.jsonl#6", 6, "")]
    assert rows[0]["payload"] == b"first" and rows[-1]["payload"] == b"ok"
    assert "line 4 is not UTF-8" in rows[1]["error_message"]
    assert rows[2]["error_message"].startswith("field 'text' holds a list ([1]), not bytes or text")
    assert "line 6 is not valid JSON" in rows[3]["error_message"] and '{"text": "last"' in rows[3]["error_message"]
    (tmp_path / "t.txt").write_bytes(bom + b"one\ntwo\n")
    lines = read_shard(Shard(files=(str(tmp_path / "t.txt"),)), ReaderOptions(format="text_lines", root=str(tmp_path)))
    assert lines.column("payload").to_pylist() == [b"one", b"two"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "d.txt").write_bytes(gzip.compress(bom + b"a whole document"))
    (tmp_path / "docs" / "d.txt").rename(tmp_path / "docs" / "d.txt.gz")
    doc = read_shard(Shard(files=(str(tmp_path / "docs" / "d.txt.gz"),)),
                     ReaderOptions(format="text_files", root=str(tmp_path / "docs")))
    assert doc.column("payload").to_pylist() == [b"a whole document"]
