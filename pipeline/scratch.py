"""Where a run writes before publishing, so that a killed job never leaves an output that looks finished.

A run builds its output in a hidden scratch beside it, `.NAME.partial-<pid>-<hex>`,
and publishes it with the DONE.json marker written last (see
pipeline.dataset_info):
- `LocalScratch`, a local DIR: the scratch dir is renamed onto DIR;
- `DirectScratch`, a direct run (`--write_mode`, pipeline.job): the Beam workers
  write the scratch prefix beside the URI, `pipeline.remote.publish` copies it
  into the final prefix, all through Beam's FileSystems.
Rejected rows of a job that fails a check are kept beside the output as
`NAME.rejected-<UTC time>`. A later run on the same output removes stale
scratch: local dirs whose process is gone, prefixes by age (another machine's
pid cannot be checked).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import time
import uuid

from pipeline import remote
from pipeline.atomic import write_text_atomic
from pipeline.dataset_info import is_uri
from pipeline.errors import UsageError
from pipeline.job_spec import STATS_TMP, TFT_TMP

# A direct run's scratch prefix not written to for this long is taken for a killed run's.
STALE_PARTIAL_AGE_S = 24 * 3600.0


def scratch_name(name: str) -> str:
    """A new scratch name for output NAME: `.NAME.partial-<pid>-<hex8>` (matched by `_partial_pattern`)."""
    return f".{name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _partial_pattern(name: str) -> re.Pattern[str]:
    """Names of the scratch dirs of output NAME: `.NAME.partial-<pid>-<hex8>` (and `.NAME.partial-<hex8>`, pid-less)."""
    return re.compile(rf"\.{re.escape(name)}\.partial-(?:(?P<pid>\d+)-)?[0-9a-f]{{8}}")


def direct_target(output: str) -> tuple[str, str]:
    """(parent, name) of a direct run's output: a URI, or a local path made absolute (the workers' cwd may differ)."""
    if not is_uri(output):
        path = pathlib.Path(output).absolute()
        return str(path.parent), path.name
    parent, _, name = output.rstrip("/").rpartition("/")
    if "://" not in parent or not name:
        raise UsageError(
            f"--output {output}: name a prefix inside the bucket (e.g. {output.rstrip('/')}/criteo); "
            "the job writes its scratch prefix beside the output"
        )
    return parent, name


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs on this machine: its scratch dir is then not stale."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_partials(output: pathlib.Path) -> list[pathlib.Path]:
    """Deletes scratch dirs of `output` left by killed runs (only this output's naming, owner gone)."""
    pattern = _partial_pattern(output.name)
    removed: list[pathlib.Path] = []
    if not output.parent.is_dir():
        return removed
    for path in sorted(output.parent.iterdir()):
        match = pattern.fullmatch(path.name)
        if not match or not path.is_dir() or (match["pid"] and _alive(int(match["pid"]))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def remove_stale_prefixes(output: str, max_age_s: float = STALE_PARTIAL_AGE_S, now: float | None = None) -> list[str]:
    """Deletes scratch prefixes of a direct run's `output` whose newest object is older than `max_age_s`.

    Their writers may have run on other machines, so no pid is checked: a
    prefix counts as a killed run's once nothing under it changed for a day.
    """
    parent, name = direct_target(output)
    pattern = _partial_pattern(name)
    newest: dict[str, float] = {}
    for path, (_, updated) in remote.objects_under(f"{parent}/.{name}.partial-").items():
        first = path[len(parent) + 1:].split("/", 1)[0]
        if pattern.fullmatch(first):
            newest[first] = max(newest.get(first, 0.0), updated)
    now = time.time() if now is None else now
    stale = [f"{parent}/{first}" for first, updated in sorted(newest.items()) if now - updated > max_age_s]
    for prefix in stale:
        remote.delete_prefix(prefix)
    return stale


def keep_rejected(work_dir: pathlib.Path, output: pathlib.Path) -> pathlib.Path | None:
    """Moves a failed job's rejected/ rows beside DIR as `DIR.rejected-<UTC time>`; its path."""
    rejected = work_dir / "rejected"
    if not rejected.is_dir():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = output.parent / f"{output.name}.rejected-{stamp}"
    if kept.exists():
        kept = kept.with_name(f"{kept.name}-{uuid.uuid4().hex[:4]}")
    rejected.rename(kept)
    return kept


def _publish(work_dir: pathlib.Path, output: pathlib.Path) -> None:
    """Renames the finished scratch dir onto `output`; a previous run there is renamed aside first, then removed."""
    if output.exists():
        trash = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
        output.rename(trash)
        work_dir.rename(output)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        work_dir.rename(output)


def _is_job_scratch(name: str) -> bool:
    """Scratch of the Beam job inside its work dir: partial stats, TFT temp, fileio's .temp* dirs."""
    first = name.split("/", 1)[0]
    return first in (STATS_TMP, TFT_TMP) or first.startswith(".temp")


class LocalScratch:
    """A local DIR: the scratch dir beside it is renamed onto it when finished."""

    def __init__(self, work_dir: str, output: str):
        self.work = pathlib.Path(work_dir)
        self.output = pathlib.Path(output)

    def remove_stale(self) -> None:
        remove_stale_partials(self.output)

    def read_bytes(self, name: str) -> bytes:
        return (self.work / name).read_bytes()

    def names(self) -> list[str]:
        """Every file in the scratch, relative and `/`-separated, sorted."""
        return sorted(p.relative_to(self.work).as_posix() for p in self.work.rglob("*") if p.is_file())

    def write_text(self, name: str, text: str) -> None:
        write_text_atomic(self.work / name, text)

    def add_tree(self, local: pathlib.Path, name: str) -> None:
        shutil.copytree(local, self.work / name)

    def drop_job_scratch(self) -> None:
        for path in self.work.iterdir():
            if _is_job_scratch(path.name):
                shutil.rmtree(path, ignore_errors=True)

    def keep_rejected(self) -> str | None:
        kept = keep_rejected(self.work, self.output)
        return None if kept is None else str(kept)

    def publish(self, overwrite: bool) -> None:
        _publish(self.work, self.output)

    def discard(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


class DirectScratch:
    """A direct run: a scratch prefix beside the URI, written by the workers; the rest through Beam's FileSystems."""

    def __init__(self, work_dir: str, output: str):
        self.work = work_dir
        parent, name = direct_target(output)
        self.output = f"{parent}/{name}"

    def remove_stale(self) -> None:
        remove_stale_prefixes(self.output)

    def read_bytes(self, name: str) -> bytes:
        return remote.read_bytes(f"{self.work}/{name}")

    def names(self) -> list[str]:
        """Every object under the scratch prefix, relative, sorted."""
        return sorted(remote.list_objects(self.work))

    def write_text(self, name: str, text: str) -> None:
        remote.write_bytes(f"{self.work}/{name}", text.encode())

    def add_tree(self, local: pathlib.Path, name: str) -> None:
        files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        remote.copy_objects(str(local), f"{self.work}/{name}", files)

    def drop_job_scratch(self) -> None:
        remote.delete_objects(self.work, sorted(n for n in remote.list_objects(self.work) if _is_job_scratch(n)))

    def keep_rejected(self) -> str | None:
        """Copies rejected/ beside the output as `NAME.rejected-<UTC time>`; its prefix."""
        names = sorted(n for n in remote.list_objects(self.work) if n.startswith("rejected/"))
        if not names:
            return None
        kept = f"{self.output}.rejected-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        if remote.list_objects(kept):
            kept = f"{kept}-{uuid.uuid4().hex[:4]}"
        remote.copy_objects(f"{self.work}/rejected", kept, [n.split("/", 1)[1] for n in names])
        return kept

    def publish(self, overwrite: bool) -> None:
        remote.publish(self.work, self.output, overwrite)

    def discard(self) -> None:
        remote.delete_prefix(self.work)


Scratch = LocalScratch | DirectScratch
