"""Reading landing files as Arrow batches: raw text lines (JSONL, CSV) and the mapped columns of Parquet.

Text files are streamed in blocks and split into records with numpy (zero-copy Arrow slices), so memory stays
bounded and there is no Python object per line; the SQL of sql/ingest/ parses the lines.
"""

from __future__ import annotations

import csv
import io
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.ingest.discovery import open_landing
from pipeline.ingest.errors import IngestFormatError
from pipeline.ingest.kinds import Kind, SourceFile

READ_BLOCK_BYTES = 16 * 1024 * 1024
COALESCE_ROWS = 65_536            # lines of small files are packed into Arrow batches of about this many rows
UTF8_BOM = b"\xef\xbb\xbf"
RAW_LINES_SCHEMA = pa.schema([("file_no", pa.int32()), ("line_no", pa.int64()), ("raw", pa.large_binary())])


def iter_raw_lines(path: Path, block_bytes: int = READ_BLOCK_BYTES, max_line_bytes: int = 1 << 20,
                   on_block: Callable[[bytes], Any] | None = None, quoted: bool = False) -> Iterator[pa.RecordBatch]:
    """Stream a text file's records as Arrow batches (line_no, raw) without one Python object per record.

    A record ends at \\n only (a \\r right before it is part of the terminator); a lone \\r, U+2028 or U+0085
    inside a line does not end it. With `quoted` (CSV, RFC 4180) a \\n inside a double-quoted field does not end
    it either: a record ends at a \\n preceded by an even number of '"' since the record began, so a quoted field
    may span lines. Blank records (nothing or a lone \\r before the \\n) are not rows. line_no is the 1-based
    physical line the record starts on. `raw` is a zero-copy slice of the block read: the record followed by
    its terminator (and any blank lines after it). A record longer than max_line_bytes is cut to its first
    max_line_bytes + 1 bytes and the rest is skipped up to its terminator, so memory stays bounded and the row
    can be quarantined as too long. on_block sees every block read (e.g. a checksum); .gz files are
    decompressed, and a symbolic link is never opened (discovery.open_landing).
    """
    splitter = _RecordSplitter(max_line_bytes, quoted)
    with open_landing(path) as fh:
        try:
            for block, eof in _blocks(fh, block_bytes, on_block):
                yield from splitter.feed(block, eof)
        except (OSError, EOFError, zlib.error) as err:
            raise IngestFormatError(f"{path}: cannot be read: {err}") from err


def _blocks(fh: IO[bytes], block_bytes: int,
            on_block: Callable[[bytes], Any] | None) -> Iterator[tuple[bytes, bool]]:
    """(block, at end of file) until the end (an empty last block); a leading byte order mark is dropped."""
    first = True
    while True:
        block = fh.read(block_bytes)
        eof = not block
        if on_block is not None and block:
            on_block(block)
        if first and block.startswith(UTF8_BOM):
            block = block[len(UTF8_BOM):]  # a byte order mark is not part of the first line
        first = False
        yield block, eof
        if eof:
            return


class _RecordSplitter:
    """Splits consecutive blocks of a file into record batches, carrying a record cut by a block boundary."""

    def __init__(self, max_line_bytes: int, quoted: bool) -> None:
        self.max_line_bytes = max_line_bytes
        self.quoted = quoted
        self.lines_before = 0   # newlines before the carried data
        self.carry = b""
        self.skipping = False   # inside an over-long record whose start was already emitted
        self.open_quote = False  # the skipped part of that record holds an odd number of quotes

    def feed(self, block: bytes, eof: bool) -> Iterator[pa.RecordBatch]:
        data = self.carry + block if self.carry else block
        self.carry = b""
        if self.skipping:
            data = self._skip(data)
        if self.skipping or not data:
            return
        buf = np.frombuffer(data, dtype=np.uint8)
        newlines = np.flatnonzero(buf == 10)
        closing = _record_ends(buf, newlines, self.quoted)  # indices into newlines
        ends = newlines[closing]
        first_lines = self.lines_before + 1 + np.concatenate(([0], closing + 1))
        if eof and (len(ends) == 0 or ends[-1] != len(buf) - 1):
            ends = np.append(ends, len(buf))  # the last record has no terminator
        if len(ends):
            batch = _records_batch(data, buf, ends, first_lines[: len(ends)])
            if batch is not None:
                yield batch
        if eof:
            return
        if len(closing):
            self.lines_before += int(closing[-1]) + 1
            self.carry = data[int(newlines[closing[-1]]) + 1:]
        else:
            self.carry = data
        if len(self.carry) > self.max_line_bytes:
            yield pa.record_batch({"line_no": pa.array([self.lines_before + 1], pa.int64()),
                                   "raw": pa.array([self.carry[: self.max_line_bytes + 1]], pa.large_binary())})
            self.open_quote = self.quoted and self.carry.count(b'"') % 2 == 1
            self.lines_before += self.carry.count(b"\n")
            self.carry, self.skipping = b"", True

    def _skip(self, data: bytes) -> bytes:
        """Consume the over-long record up to its terminator; returns the data after it."""
        buf = np.frombuffer(data, dtype=np.uint8)
        newlines = np.flatnonzero(buf == 10)
        closing = _record_ends(buf, newlines, self.quoted, self.open_quote)
        if not len(closing):
            self.lines_before += len(newlines)
            self.open_quote ^= self.quoted and data.count(b'"') % 2 == 1
            return b""
        self.lines_before += int(closing[0]) + 1
        self.skipping = self.open_quote = False
        return data[int(newlines[closing[0]]) + 1:]


def _record_ends(buf: np.ndarray, newlines: np.ndarray, quoted: bool, open_quote: bool = False) -> np.ndarray:
    """Indices of the newlines that end a record: all of them, or (quoted) those outside a quoted field."""
    if not quoted:
        return np.arange(len(newlines))
    quotes = np.flatnonzero(buf == 34)
    before = np.searchsorted(quotes, newlines) + int(open_quote)
    return np.flatnonzero(before % 2 == 0)


def _records_batch(data: bytes, buf: np.ndarray, ends: np.ndarray, numbers: np.ndarray) -> pa.RecordBatch | None:
    starts = np.empty(len(ends), dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    length = ends - starts
    blank = (length == 0) | ((length == 1) & (buf[np.minimum(starts, len(buf) - 1)] == 13))
    numbers = numbers.astype(np.int64)
    if blank.any():
        keep = ~blank
        starts, ends, numbers = starts[keep], ends[keep], numbers[keep]
    if not len(starts):
        return None
    offsets = np.empty(len(starts) + 1, dtype=np.int64)
    offsets[:-1] = starts
    offsets[-1] = min(int(ends[-1]) + 1, len(buf))
    raw = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(starts),
                                           [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return pa.record_batch({"line_no": pa.array(numbers), "raw": raw})


def csv_header(path: Path, delimiter: str, max_line_bytes: int) -> list[str] | None:
    """The column names of a CSV file (its first non-blank line), or None for a file without lines."""
    first = next(iter_raw_lines(path, block_bytes=1 << 16, max_line_bytes=max_line_bytes, quoted=True), None)
    if first is None:
        return None
    text = first.column("raw")[0].as_py().rstrip(b"\r\n").decode("utf-8", errors="replace")
    return [name.strip() for name in next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])]


def text_batches(files: list[SourceFile], max_line_bytes: int, rows_read: dict[int, int],
                 hashers: dict[int, Any]) -> Iterator[pa.RecordBatch]:
    """Raw lines of JSONL/CSV files (CSV headers left out) tagged with file_no; small files are packed.
    Counts the rows read per file_no and feeds every block to the file's hasher, if it has one."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for src in files:
        hasher = hashers.get(src.file_no)
        header_left = src.fmt == "csv"
        for lines in iter_raw_lines(src.path, max_line_bytes=max_line_bytes, quoted=src.fmt == "csv",
                                    on_block=hasher.update if hasher is not None else None):
            if header_left:
                lines, header_left = lines.slice(1), False
            if not lines.num_rows:
                continue
            rows_read[src.file_no] += lines.num_rows
            pending.append(pa.record_batch(
                [pa.array(np.full(lines.num_rows, src.file_no, np.int32)), lines.column(0), lines.column(1)],
                schema=RAW_LINES_SCHEMA))
            pending_rows += lines.num_rows
            if pending_rows >= COALESCE_ROWS:
                yield _concat(pending)
                pending, pending_rows = [], 0
    if pending:
        yield _concat(pending)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    return batches[0] if len(batches) == 1 else pa.concat_batches(batches)


def source_schema(kind: Kind) -> pa.Schema:
    """The columns of `source_rows` (what event_fields_parquet / item_fields_parquet read)."""
    columns = [(f, pa.list_(pa.string()) if f in kind.list_fields else pa.string()) for f in kind.fields]
    return pa.schema([("file_no", pa.int32()), ("line_no", pa.int64()), *columns])


def parquet_batches(files: list[SourceFile], kind: Kind, mapping: dict[str, str], ts_format: str,
                    rows_read: dict[int, int]) -> Iterator[pa.RecordBatch]:
    """The mapped columns of Parquet files as text (lists of text for attributes), tagged with file/row."""
    schema = source_schema(kind)
    for src in files:
        with open_landing(src.path) as fh:
            parquet = pq.ParquetFile(fh)
            present = set(parquet.schema_arrow.names)
            columns = sorted({mapping[f] for f in kind.fields if mapping.get(f) in present})
            row = 0
            for batch in parquet.iter_batches(batch_size=COALESCE_ROWS, columns=columns):
                n = batch.num_rows
                arrays = [pa.array(np.full(n, src.file_no, np.int32)), pa.array(np.arange(row + 1, row + n + 1))]
                for name in kind.fields:
                    source = mapping.get(name)
                    column = batch.column(source) if source in present else None
                    ts = ts_format if name == "timestamp" else ""
                    arrays.append(_as_text(column, n, schema.field(name).type, ts))
                rows_read[src.file_no] += n
                row += n
                yield pa.record_batch(arrays, schema=schema)


def _as_text(column: pa.Array | None, n: int, target: pa.DataType, ts_format: str) -> pa.Array:
    """A Parquet column as text (native timestamps in the configured timestamp format) or a list of text."""
    if column is None:
        return pa.nulls(n, target)
    if pa.types.is_list(target):
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            return pc.cast(column, target)
        one_each = pa.array(np.arange(n + 1, dtype=np.int32))
        return pa.ListArray.from_arrays(one_each, pc.cast(column, pa.string()))
    if ts_format and (pa.types.is_timestamp(column.type) or pa.types.is_date(column.type)):
        utc = pc.cast(pc.cast(column, pa.timestamp("us")) if pa.types.is_date(column.type) else column,
                      pa.timestamp("us", tz="UTC"))
        if ts_format == "iso":
            return pc.cast(utc, pa.string())
        micros = pc.cast(pc.cast(utc, pa.int64()), pa.float64())
        return pc.cast(pc.divide(micros, 1e6 if ts_format == "epoch_s" else 1e3), pa.string())
    return pc.cast(column, pa.string())
