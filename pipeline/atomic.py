"""Atomic file writes shared by every stage.

A reader (a trainer resuming, a model server polling its config) must never
see half a file: write a temp file beside the target, then rename over it.
`atomic_path` is the one implementation; `write_text_atomic` the common case.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A temp path beside `path` to write to; renamed onto `path` when the block ends cleanly.

    The temp name ends with the target's name, so writers that check or add a
    suffix (`keras` wants `.weights.h5`, `np.savez` appends `.npz`) accept it.
    On an exception the temp file is removed and the target left as it was.
    The file is world-readable (0644, not mkstemp's 0600): model servers and
    TensorBoard often run as another user.
    """
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{target.name}", dir=target.parent)
    os.close(fd)
    tmp = pathlib.Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` via a temp file in the same folder and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
