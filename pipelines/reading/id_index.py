"""Every row's id as 16 bytes: the duplicate-id pass's index (see duplicates.py).

A row is held as two uint64s in numpy arrays: a 64-bit hash of its id and its packed
position (file index << _ROW_BITS | source_row). Rows whose hash repeats are the
*candidates*; only they are looked at again, with their real ids, since two different ids
may share a hash.

    hash_ids    a 64-bit hash of each id, vectorized over an Arrow string array; the same
                in every process and on every machine (no salted Python hash()), so Ray
                tasks may hash ids for the driver
    IdIndex     hashes and positions of every row added, sorted by hash in blocks; the
                rows whose hash repeats (candidates)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HashIds = Callable[[pa.Array | pa.ChunkedArray], np.ndarray]


class IdPassLimitError(ValueError):
    """The input has more files, or a file more rows, than a packed position holds."""


# --- hashing ------------------------------------------------------------------------------
# One lane of xxHash64's round (acc = rotl(acc + word * P2, 31) * P1) over the id's 8-byte
# little-endian words, seeded with its length, then MurmurHash3's fmix64 finalizer. Numpy
# runs it a word at a time over all ids at once. Two ids of the same length that differ in
# one word never collide (each round is a bijection of acc); other collisions are as rare
# as for a random function (about n**2 / 2**65 pairs: 0.003 for 10**8 ids) and are caught
# anyway when candidates are confirmed against the real ids.
_P1 = np.uint64(0x9E3779B185EBCA87)  # xxHash64 PRIME64_1
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)  # xxHash64 PRIME64_2
_M1 = np.uint64(0xFF51AFD7ED558CCD)  # MurmurHash3 fmix64
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


# Ids are hashed this many at a time: the arrays of one round (starts, lengths, words,
# masks) are about 80 bytes an id, so a slice costs ~5 MB however many ids come at once.
_HASH_SLICE = 1 << 16


def hash_ids(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A uint64 hash of each id (string or binary; a null hashes as "")."""
    chunks = ids.chunks if isinstance(ids, pa.ChunkedArray) else [ids]
    parts = [_hash_array(c.slice(i, _HASH_SLICE)) for c in chunks for i in range(0, len(c), _HASH_SLICE)]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


def _hash_array(ids: pa.Array) -> np.ndarray:
    if ids.null_count:
        ids = pc.fill_null(ids, "")
    ids = ids.cast(pa.large_binary())  # one layout: int64 offsets into one data buffer
    n = len(ids)
    offsets = np.frombuffer(ids.buffers()[1], dtype="<i8", count=n + 1, offset=ids.offset * 8)
    starts, lengths = offsets[:-1] - offsets[0], np.diff(offsets)
    words = _words(ids.buffers()[2], int(offsets[0]), int(offsets[-1]))
    nwords = (lengths + 7) >> 3
    longest = int(nwords.max(initial=0))
    # Ids longest first, so the ids that still have a word w are a prefix (no masks).
    order = None if int(nwords.min(initial=0)) == longest else np.argsort(-nwords, kind="stable")
    if order is not None:
        starts, lengths = starts[order], lengths[order]
    longer_than = n - np.cumsum(np.bincount(nwords, minlength=longest + 1))
    acc = (lengths.astype(np.uint64) * _P1) ^ _P2
    for w in range(longest):
        k = n if order is None else int(longer_than[w])
        _round(acc[:k], _word(words, starts[:k], lengths[:k], w))
    acc = _fmix64(acc)
    if order is None:
        return acc
    out = np.empty_like(acc)
    out[order] = acc
    return out


def _words(buf: pa.Buffer | None, start: int, end: int) -> np.ndarray:
    """The id bytes [start, end) as overlapping little-endian uint64s, one per byte offset
    (8 zero bytes of padding keep the last word inside the copy)."""
    data = np.zeros(end - start + 8, np.uint8)
    if end > start and buf is not None:
        data[: end - start] = np.frombuffer(buf, np.uint8, count=end - start, offset=start)
    return np.ndarray(shape=(end - start + 1,), dtype="<u8", buffer=data, strides=(1,))


def _word(words: np.ndarray, starts: np.ndarray, lengths: np.ndarray, w: int) -> np.ndarray:
    """Word w of each id, the bytes past its end zeroed (they belong to the next id)."""
    word = words[starts + 8 * w]
    left = lengths - 8 * w
    short = left < 8
    if short.any():
        bits = (np.minimum(left, 7).astype(np.uint64) * np.uint64(8))
        word &= np.where(short, (np.uint64(1) << bits) - np.uint64(1), _ALL_ONES)
    return word


def _round(acc: np.ndarray, word: np.ndarray) -> None:
    acc += word * _P2
    acc[:] = ((acc << np.uint64(31)) | (acc >> np.uint64(33))) * _P1


def _fmix64(h: np.ndarray) -> np.ndarray:
    h ^= h >> np.uint64(33)
    h *= _M1
    h ^= h >> np.uint64(33)
    h *= _M2
    h ^= h >> np.uint64(33)
    return h


# --- packed positions ---------------------------------------------------------------------
# A row's position is (file index << _ROW_BITS) | source_row in one uint64. 36 bits of row
# (6.9e10 rows in one file) leave 28 bits of file (2.7e8 files), both far above any input
# seen so far (10**5 WebDataset tars of 10**4 samples is 10**9 rows in all). Read at call
# time so a test can lower the limits.
_ROW_BITS = 36


def max_files() -> int:
    return 1 << (64 - _ROW_BITS)


def max_rows() -> int:
    return 1 << _ROW_BITS


def pack(files: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions of rows (int64 source_row >= 0) in files (indices < max_files())."""
    return (files.astype(np.uint64) << np.uint64(_ROW_BITS)) | rows.astype(np.uint64)


def unpack(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(file index, source_row) of packed positions, as int64."""
    rows = positions & np.uint64(max_rows() - 1)
    return (positions >> np.uint64(_ROW_BITS)).astype(np.int64), rows.astype(np.int64)


# --- the index ----------------------------------------------------------------------------
# Rows wait in per-table arrays until a block of this many is full; then the block is put in
# order of the top _PART_BITS of the hash (a stable argsort of 16-bit keys is a radix sort:
# 2.4 ms for 2**18 rows here, against 20 ms for an argsort of the whole hashes). 2**18 rows
# are 4 MiB of hashes and positions; ordering a block costs ~8 MiB more for a moment, small
# next to the 16 bytes a row held (160 MB for 10**7 rows).
_BLOCK_ROWS = 1 << 18
_PART_BITS = 10
# Candidates are found per bucket: a run of parts, taken from every block, about this many
# rows (4 MiB), sorted. 1024 parts keep buckets near this size up to 2.7e8 rows.
_BUCKET_ROWS = 1 << 18
# A table's source_uri column is run-length encoded (rows of one file come together) and
# each run looked up once; past this many runs a hash table over the uris is cheaper.
_URI_RUNS = 64


class IdIndex:
    """The hash and packed position of every row added (16 bytes a row), and the files
    those positions point into: (rank, source_uri) pairs, numbered as they are first seen.
    """

    def __init__(self, hash_fn: HashIds = hash_ids) -> None:
        self.hash_fn = hash_fn
        self.files: list[tuple[int, str]] = []
        self.rows = 0  # rows of data added
        self._file_numbers: dict[tuple[int, str], int] = {}
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        # (hashes, positions, where each part starts): hashes in order of their top bits
        self._blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    @property
    def nbytes(self) -> int:
        """Bytes of the rows held (until candidates())."""
        held = [(h, p) for h, p in self._pending] + [(h, p) for h, p, _ in self._blocks]
        return sum(h.nbytes + p.nbytes for h, p in held)

    def add(self, rank: int, table: pa.Table) -> None:
        """Rows of a read_shard_ids table (or of one whose ids Ray tasks hashed into an
        `id_hash` uint64 column)."""
        table, positions = self.rows_of_data(rank, table, add_files=True)
        if not len(positions):
            return
        if "id_hash" in table.column_names:
            hashes = table.column("id_hash").to_numpy().astype(np.uint64, copy=False)
        else:
            hashes = self.hash_fn(table.column("id"))
        self._pending.append((hashes, positions))
        self._pending_rows += len(positions)
        self.rows += len(positions)
        if self._pending_rows >= _BLOCK_ROWS:
            self._flush()

    def rows_of_data(self, rank: int, table: pa.Table, *, add_files: bool) -> tuple[pa.Table, np.ndarray]:
        """The table's rows of data and their packed positions. Rows with source_row < 0
        (file-level errors) are no rows of data; with add_files=False, neither are rows of
        files not added before."""
        rows = table.column("source_row").to_numpy()
        if not (rows >= 0).all():
            table = table.filter(pa.array(rows >= 0))
            rows = table.column("source_row").to_numpy()
        files = self._file_indices(rank, table.column("source_uri"), add=add_files)
        if not (files >= 0).all():
            known = files >= 0
            table, files, rows = table.filter(pa.array(known)), files[known], rows[known]
        _check_rows(rows, table.column("source_uri"))
        return table, pack(files, rows)

    def candidates(self) -> tuple[np.ndarray, np.ndarray]:
        """Hashes and positions of the rows whose hash some other row has too. Once: the
        index lets go of its rows (all but these are done with), keeping its files."""
        self._flush()
        parts = 1 << _PART_BITS
        step = max(1, min(parts, parts * _BUCKET_ROWS // max(self.rows, 1)))
        found_h, found_p = [np.zeros(0, np.uint64)], [np.zeros(0, np.uint64)]
        for first in range(0, parts, step):
            last = min(first + step, parts)
            h = np.concatenate([bh[c[first]:c[last]] for bh, _, c in self._blocks] or [found_h[0]])
            p = np.concatenate([bp[c[first]:c[last]] for _, bp, c in self._blocks] or [found_p[0]])
            repeated = _repeated(h)
            found_h.append(h[repeated])
            found_p.append(p[repeated])
        self._blocks = []
        return np.concatenate(found_h), np.concatenate(found_p)

    def file_order(self) -> np.ndarray:
        """Per file index, its place in (rank, source_uri) order: the order in which the
        first occurrence of an id is chosen."""
        order = np.empty(len(self.files), np.int64)
        order[sorted(range(len(self.files)), key=self.files.__getitem__)] = np.arange(len(self.files))
        return order

    def _flush(self) -> None:
        if not self._pending:
            return
        h = np.concatenate([h for h, _ in self._pending])
        p = np.concatenate([p for _, p in self._pending])
        self._pending, self._pending_rows = [], 0
        part = (h >> np.uint64(64 - _PART_BITS)).astype(np.uint16)
        order = np.argsort(part, kind="stable")
        starts = np.zeros((1 << _PART_BITS) + 1, np.int64)
        np.cumsum(np.bincount(part, minlength=1 << _PART_BITS), out=starts[1:])
        self._blocks.append((h[order], p[order], starts))

    def _file_indices(self, rank: int, uris: pa.ChunkedArray, *, add: bool) -> np.ndarray:
        """Each row's file index (int64; -1 for a file not seen before when not `add`)."""
        parts = [np.zeros(0, np.int64)]
        for chunk in uris.chunks:
            runs = pc.run_end_encode(chunk)
            if len(runs.values) <= _URI_RUNS:
                numbers = self._file_numbers_of(rank, runs.values, add=add)
                parts.append(np.repeat(numbers, np.diff(runs.run_ends.to_numpy(), prepend=0)))
            else:
                distinct = pc.unique(chunk)
                numbers = self._file_numbers_of(rank, distinct, add=add)
                parts.append(numbers[pc.index_in(chunk, value_set=distinct).to_numpy()])
        return np.concatenate(parts)

    def _file_numbers_of(self, rank: int, uris: pa.Array, *, add: bool) -> np.ndarray:
        return np.array([self._file_number(rank, uri, add=add) for uri in uris.to_pylist()], np.int64)

    def _file_number(self, rank: int, uri: str, *, add: bool) -> int:
        key = (rank, uri)
        number = self._file_numbers.get(key)
        if number is None and add:
            if len(self.files) >= max_files():
                raise IdPassLimitError(
                    f"the duplicate-id pass holds at most {max_files()} input files "
                    f"(a row's position is packed in 64 bits, {_ROW_BITS} of them for its row); "
                    f"{uri} is one more"
                )
            number = self._file_numbers[key] = len(self.files)
            self.files.append(key)
        return -1 if number is None else number


def _check_rows(rows: np.ndarray, uris: pa.ChunkedArray) -> None:
    if len(rows) and int(rows.max()) >= max_rows():
        uri = uris[int(rows.argmax())].as_py()
        raise IdPassLimitError(
            f"the duplicate-id pass holds at most {max_rows()} rows a file "
            f"(a row's position is packed in 64 bits, {64 - _ROW_BITS} of them for its file); "
            f"{uri} has row {int(rows.max())}"
        )


def _repeated(h: np.ndarray) -> np.ndarray:
    """Whether each entry's value appears more than once in h (a sort of the values alone:
    4x faster than an argsort)."""
    s = np.sort(h)
    twice = s[1:][s[1:] == s[:-1]]
    return isin_sorted(h, np.unique(twice))


def isin_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """values (uint64) in sorted_set, as a bool mask, without sorting `values`."""
    if len(values) <= 16 * len(sorted_set):
        return _searched(values, sorted_set)
    # Against a small set, a table of the set's low 16 bits first: one gather leaves out
    # nearly every value, and only the rest are binary-searched (a searchsorted of all
    # 10**7 hashes was 0.9 s of the pass, this is a tenth of it).
    seen = np.zeros(1 << 16, bool)
    seen[(sorted_set & np.uint64(0xFFFF)).astype(np.intp)] = True
    maybe = np.flatnonzero(seen[(values & np.uint64(0xFFFF)).astype(np.intp)])
    found = np.zeros(len(values), bool)
    found[maybe] = _searched(values[maybe], sorted_set)
    return found


def _searched(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if not len(sorted_set):
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values
