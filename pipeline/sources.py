"""Input files -> byte ranges -> batches of lines, for any Beam filesystem.

Reading whole batches of lines per range (instead of ReadFromText's one
element per line) keeps per-element overhead out of the hot path; splitting
plain files into byte ranges keeps the work parallel across workers. Gzipped
files cannot be split and form one range each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.errors import UsageError

_READ_BLOCK = 8 << 20
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark at the start of a file is not data


class InputError(UsageError):
    """An input is missing, empty or unreadable."""


@dataclasses.dataclass(frozen=True)
class FileRange:
    """Lines whose first byte lies in [start, end) of `path` (end None: to the end)."""

    path: str
    start: int
    end: int | None


def resolve_inputs(patterns: list[str]) -> list[tuple[str, int]]:
    """(path, size) of every file matching the patterns; InputError on a missing or empty input."""
    files: list[tuple[str, int]] = []
    for pattern in patterns:
        try:
            matches = FileSystems.match([pattern])[0].metadata_list
        except Exception as err:  # Beam raises BeamIOError subclasses per filesystem
            raise InputError(f"input {pattern} cannot be listed: {err}") from err
        if not matches:
            raise InputError(f"input {pattern} matches no file; check the path")
        for meta in sorted(matches, key=lambda m: m.path):
            if meta.size_in_bytes == 0:
                raise InputError(f"input {meta.path} is empty")
            files.append((meta.path, meta.size_in_bytes))
    return files


def is_compressed(path: str) -> bool:
    """Whether Beam will decompress `path` (by its extension): such files cannot be split."""
    return CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.AUTO)


def first_line(path: str) -> bytes:
    """The first line of a (possibly gzipped) file; InputError if it has no data."""
    try:
        with _open(path) as handle:
            line = handle.readline()
    except OSError as err:
        raise InputError(f"input {path} cannot be read: {err}") from err
    line = line.removeprefix(_BOM)
    if not line.strip():
        raise InputError(f"input {path} has no data in its first line")
    return line


def plan_ranges(files: list[tuple[str, int]], range_bytes: int) -> list[FileRange]:
    """Splits plain files into ranges of about `range_bytes`; compressed files stay whole."""
    ranges: list[FileRange] = []
    for path, size in files:
        if is_compressed(path) or size <= range_bytes:
            ranges.append(FileRange(path, 0, None))
            continue
        starts = list(range(0, size, range_bytes))
        ranges.extend(FileRange(path, s, min(s + range_bytes, size)) for s in starts)
    return ranges


def read_line_batches(rng: FileRange, skip_header: bool, batch_lines: int) -> Iterator[list[bytes]]:
    """Batches of lines (no trailing newline) of one range."""
    with _open(rng.path) as handle:
        if rng.start > 0:
            handle.seek(rng.start - 1)
            pos = rng.start - 1 + len(handle.readline())
        else:
            pos = 0
        carry = b""
        pending: list[bytes] = []
        header_left = skip_header and rng.start == 0
        while rng.end is None or pos < rng.end:
            want = _READ_BLOCK if rng.end is None else min(_READ_BLOCK, rng.end - pos)
            data = handle.read(want)
            if not data:
                break
            pos += len(data)
            if pos == len(data):
                data = data.removeprefix(_BOM)
            lines = (carry + data).split(b"\n")
            carry = lines.pop()
            if header_left and lines:
                lines = lines[1:]
                header_left = False
            pending.extend(lines)
            while len(pending) >= batch_lines:
                yield pending[:batch_lines]
                pending = pending[batch_lines:]
        if carry and rng.end is not None:
            carry += handle.readline().rstrip(b"\n")
        if carry:
            if header_left:
                carry = b""
            else:
                pending.append(carry)
        if pending:
            yield pending
