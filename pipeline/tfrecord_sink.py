"""A Beam file sink writing whole batches of records as gzipped TFRecord streams.

Beam's WriteToTFRecord takes one element per record and dominated the job's
time (~48 s per million rows here); one element per transformed batch,
framed with google_crc32c's C checksum and streamed through one zlib
compressor per shard, produces the same TFRecord format several times faster.
"""

from __future__ import annotations

import struct
import zlib
from typing import IO, Any

import google_crc32c
from apache_beam.io import fileio

_MASK_DELTA = 0xA282EAD8
_GZIP_WBITS = 31  # zlib with a gzip header, what TFRecordDataset(compression_type="GZIP") reads


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF)


def frame_records(records: list[bytes]) -> bytes:
    """TFRecord framing: length, masked crc32c of length, data, masked crc32c of data."""
    parts: list[bytes] = []
    for record in records:
        header = struct.pack("<Q", len(record))
        parts += (header, _masked_crc(header), record, _masked_crc(record))
    return b"".join(parts)


class GzipTFRecordSink(fileio.FileSink):
    """fileio sink whose elements are lists of serialized records (one transformed batch)."""

    def __init__(self, compression_level: int = 1):
        self._level = compression_level
        self._handle: IO[bytes] | None = None
        self._compressor: Any = None  # zlib's compressor type is private to typeshed

    def open(self, fh: IO[bytes]) -> None:
        self._handle = fh
        self._compressor = zlib.compressobj(self._level, zlib.DEFLATED, _GZIP_WBITS)

    def write(self, record: list[bytes]) -> None:
        assert self._handle is not None, "write before open"
        self._handle.write(self._compressor.compress(frame_records(record)))

    def flush(self) -> None:
        assert self._handle is not None, "flush before open"
        self._handle.write(self._compressor.flush())
