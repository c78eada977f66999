"""Atomic small-file writes shared by every stage.

A reader (a trainer resuming, a model server polling its config) must never
see half a file: write a temp file beside the target, then rename over it.
"""

from __future__ import annotations

import os
import pathlib
import tempfile


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` via a temp file in the same folder and a rename.

    The file is world-readable (0644, not mkstemp's 0600): model servers and
    TensorBoard often run as another user.
    """
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
