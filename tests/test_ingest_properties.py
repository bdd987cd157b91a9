"""Property-based ingest tests: malformed JSONL and CSV files never break the stage or its accounting.

Whatever the bytes (random binary, truncated lines, wrong delimiters, huge fields, invalid UTF-8, NUL bytes,
mixed line endings, and the hostile kinds of issue 14: trailing commas, NaN/Infinity literals, infinite
timestamps, ids holding \\x1f or other control characters, object/array/boolean ids, lone CR / U+2028 / U+0085
inside a line, byte-order marks, CSV quoted fields spanning lines, gzip-compressed files, and decoy names that
must not be read: backups, partial uploads, hidden files, symbolic links), ingest either succeeds or raises an
IngestError subclass; every row read is accounted for (rows read = accepted + quarantined + duplicates, rows
read = the file's non-blank records: JSONL lines end at \\n only, CSV records per RFC 4180); and ingesting the
same files again changes nothing (same event_ids, a no-op in the ledger).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import tempfile
from pathlib import Path

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import lake
from pipeline.catalog import Catalog
from pipeline.config import Settings, load_settings
from pipeline.ingest import IngestError, IngestQualityError, IngestVolumeError, ingest

DAY = dt.date(2026, 11, 21)
PROPERTY_SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.one_of(st.text(alphabet="abcxyz0123456789 \"',;", min_size=0, max_size=6),
                st.sampled_from(["a\x1fb", "a\tb", "a\u0085b", "a\u2028b", "a\nb", "x\r\ny", {"id": 1}, [1], True,
                                 None, 17]))
timestamps = st.sampled_from(["2026-11-21T10:00:00Z", "2026-11-20T23:59:59Z", "2026-11-23T00:00:00Z",
                              "1990-01-01T00:00:00Z", "not a time", "", "2026-11-21 08:30:00+02:00", "infinity",
                              "-infinity", "2024-01-01T00:00:00Z"])
kinds = st.sampled_from(["view", "click", "Purchase", "hover", ""])
values = st.one_of(st.none(), st.integers(-5, 5), st.floats(allow_nan=True), st.sampled_from(["x", "", "1e3"]))
fields = st.tuples(ids, ids, kinds, values, timestamps)
endings = st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\n"])


def jsonl_line(user: object, item: object, kind: str, value: object, ts: str) -> bytes:
    return json.dumps({"user_id": user, "item_id": item, "event_type": kind, "value": value,
                       "timestamp": ts}).encode()


def csv_line(user: object, item: object, kind: str, value: object, ts: str) -> bytes:
    def quote(v: object) -> str:
        text = "" if v is None else str(v)
        return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\r\n') else text
    return ",".join(quote(v) for v in (user, item, kind, value, ts)).encode()


@st.composite
def corrupted(draw: st.DrawFn, line: bytes) -> bytes:
    """A line, possibly damaged in one of the ways real logs are."""
    how = draw(st.sampled_from(["keep", "keep", "truncate", "binary", "invalid_utf8", "nul", "huge",
                                "wrong_delimiter", "not_json", "trailing_comma", "nan_literal", "lone_cr",
                                "separator", "bom"]))
    if how == "truncate":
        return line[: draw(st.integers(0, max(len(line) - 1, 0)))]
    if how == "binary":
        return draw(st.binary(min_size=1, max_size=40))
    if how == "invalid_utf8":
        return line[:5] + b"\xff\xc3\x28" + line[5:]
    if how == "nul":
        return line[:3] + b"\x00" + line[3:]
    if how == "huge":
        return line.replace(b"u", b"u" * draw(st.sampled_from([100, 3000])), 1) if b"u" in line else line * 200
    if how == "wrong_delimiter":
        return line.replace(b",", b";")
    if how == "not_json":
        return draw(st.sampled_from([b"[1, 2]", b"42", b'"text"', b"null", b"{}"]))
    if how == "trailing_comma":
        return line[:-1] + b",}" if line.endswith(b"}") else line + b","
    if how == "nan_literal":
        return line.replace(b'"value": null', b'"value": NaN').replace(b"null", b"Infinity", 1)
    if how in ("lone_cr", "separator"):
        cut = draw(st.integers(0, len(line)))
        inner = b"\r" if how == "lone_cr" else draw(st.sampled_from(["\u2028".encode(), "\u0085".encode()]))
        return line[:cut] + inner + line[cut:]
    if how == "bom":
        return b"\xef\xbb\xbf" + line
    return line


@st.composite
def landing_file(draw: st.DrawFn, render) -> bytes:  # noqa: ANN001 - a line renderer
    lines = [draw(corrupted(render(*draw(fields)))) for _ in range(draw(st.integers(0, 12)))]
    if lines and draw(st.booleans()):
        lines.append(lines[0])  # an exact duplicate
    return b"".join(line + draw(endings) for line in lines) + draw(st.sampled_from([b"", b"tail"]))


def records(data: bytes, quoted: bool) -> list[bytes]:
    """The file's non-blank records by the documented rule, written independently of the reader: a record ends
    at \\n only; with quoted (CSV, RFC 4180) only at a \\n outside double quotes; a record holding nothing or a
    lone \\r is blank."""
    out, start, quotes = [], 0, 0
    for i, byte in enumerate(data):
        quotes += quoted and byte == ord('"')
        if byte == ord("\n") and quotes % 2 == 0:
            out.append(data[start:i])
            start, quotes = i + 1, 0
    out.append(data[start:])
    return [r for r in out if r not in (b"", b"\r")]


def expected_rows(data: bytes, header: bool) -> int:
    data = data.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark starts the file; it is not a line
    found = records(data, quoted=header)
    return max(len(found) - 1, 0) if header else len(found)


def property_settings(root: Path) -> Settings:
    return load_settings(env={}, home=root, max_line_bytes=1024, max_field_chars=64)


def ledger_rows(settings: Settings) -> list[tuple]:
    with duckdb.connect(str(settings.paths.warehouse_path), read_only=True) as con:
        return con.execute("select status, rows_read, accepted, quarantined, duplicates from ingest_ledger "
                           "where kind = 'events' order by ingested_at").fetchall()


def event_ids(settings: Settings) -> list[str]:
    table = lake.read(Catalog.of(settings), "interactions", columns=["event_id"])
    return [] if table is None else sorted(table.column("event_id").to_pylist())


def ingest_and_account(settings: Settings, rows: int) -> tuple[str, list[tuple]]:
    """Ingest; check the documented outcome and the accounting; returns (outcome, ledger rows)."""
    try:
        ingest(settings, DAY)
        outcome = "ok"
    except IngestQualityError:
        outcome = "failed"
    except IngestVolumeError:  # e.g. no row accepted: the date is published, the night stops
        outcome = "no_volume"
    except IngestError as err:  # any other documented error: nothing may be half-published
        outcome = type(err).__name__
    entries = ledger_rows(settings)
    status, read, accepted, quarantined, duplicates = entries[-1]
    assert read == rows, f"rows read {read}, the file has {rows} data lines"
    assert read == accepted + quarantined + duplicates
    assert status in ("ok", "noop", "failed")
    return outcome, entries


DECOYS = ("{day}.{suffix}~", "{day}.{suffix}.filepart", "{day}.{suffix}.tmp", ".{day}.{suffix}", "{day}.{suffix}.zip",
          "{day}-b.{suffix}.swp")


def land_with_decoys(folder: Path, name: str, data: bytes, compress: bool) -> None:
    """The landing file (gzip-compressed if asked), beside names the naming rule ignores and a symbolic link:
    none of them may be read (each would add rows the accounting does not expect)."""
    folder.mkdir(parents=True)
    (folder / (name + ".gz" if compress else name)).write_bytes(gzip.compress(data) if compress else data)
    day, suffix = name.split(".", 1)
    for decoy in DECOYS:
        (folder / decoy.format(day=day, suffix=suffix)).write_bytes(data + b"\n" + data)
    outside = folder.parent / "outside.txt"
    outside.write_bytes(data)
    (folder / f"{day}-link.{suffix}").symlink_to(outside)


def check_file(data: bytes, suffix: str, header: bool, compress: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = property_settings(Path(tmp))
        land_with_decoys(settings.paths.landing_dir / "events", f"{DAY}.{suffix}", data, compress)
        rows = expected_rows(data, header)

        outcome, first = ingest_and_account(settings, rows)
        ids = event_ids(settings)
        again, second = ingest_and_account(settings, rows)

        assert again == outcome
        assert event_ids(settings) == ids
        assert second[-1][1:] == first[-1][1:]
        if outcome in ("ok", "no_volume"):
            assert second[-1][0] == "noop"
            assert len(ids) == first[-1][2]


@PROPERTY_SETTINGS
@given(landing_file(jsonl_line), st.booleans())
def test_any_jsonl_file_is_accounted_for_and_idempotent(data: bytes, compress: bool) -> None:
    check_file(data, "jsonl", header=False, compress=compress)


@PROPERTY_SETTINGS
@given(landing_file(csv_line), st.sampled_from([b"user_id,item_id,event_type,value,timestamp",
                                                 b"\xef\xbb\xbfuser_id,item_id,event_type,value,timestamp",
                                                 b"user_id;item_id;event_type;value;timestamp"]),
       st.sampled_from([b"\n", b"\r\n"]),
       st.booleans())
def test_any_csv_file_is_accounted_for_and_idempotent(data: bytes, header: bytes, ending: bytes,
                                                      compress: bool) -> None:
    check_file(header + ending + data, "csv", header=True, compress=compress)


@PROPERTY_SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_the_documented_errors(data: bytes) -> None:
    check_file(data, "jsonl", header=False)
    check_file(data, "csv", header=True)
