"""Pipeline outputs on object stores: published with the marker last, read through a local view.

Two I/O paths, because TensorFlow's own clients cannot serve every URI here:
its `gs://` client has the Google endpoints compiled in (it cannot be pointed
at an emulator such as the tests' `STORAGE_EMULATOR_HOST`), and `s3://` or
`hdfs://` need tensorflow-io, whose filesystem plugin does not load with
TF 2.21 (`undefined symbol: TF_VLog`). Beam's FileSystems serve every scheme
the pipeline reads and writes, and honour the emulator.

- Writing (`publish`, called by `pipeline.job` for staged runs and by
  `pipeline.scratch.DirectScratch`): a finished output, either
  built locally (`--write_mode=staged`) or written by the Beam workers into a
  scratch prefix beside the URI (`--write_mode=direct`), is copied to the URI
  through Beam's FileSystems, every object first and DONE.json last (server-side
  within one filesystem: an object store's rename is a copy and a delete anyway).
  Object stores have no atomic rename: the marker is what makes the prefix a
  finished run, so a reader never trusts a prefix without it
  (`pipeline.dataset_info`). Replacing a run deletes its marker first.
- Reading (`local_view`): a local path, or a URI that tf.io.gfile serves in this
  process, is returned unchanged (tf.data streams it natively). Any other URI
  is staged once to a local cache keyed by the URI and its DONE.json content
  (`OPTFUSION_CACHE`, default ~/.cache/optfusion/outputs): a re-published run
  has a new marker and so a new cache entry, a finished entry is reused as is.
  Staging (one sequential copy) rather than streaming records through a Python
  generator, because the trainer reads every split once per epoch and the
  generator path is GIL-bound; docs/SCALING.md has the measurements.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import re
import shutil
import uuid

from pipeline.atomic import atomic_path
from pipeline.dataset_info import DatasetInfoError, is_uri
from pipeline.errors import UsageError
from pipeline.features import DONE_FILE

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
CACHE_ENV = "OPTFUSION_CACHE"
_CHUNK = 8 << 20


def scheme(path: str | pathlib.Path) -> str:
    """`gs` for `gs://b/x`; "" for a local path."""
    return str(path).split("://", 1)[0].lower() if is_uri(path) else ""


@functools.cache
def _tf_schemes() -> frozenset[str]:
    import tensorflow as tf

    return frozenset(tf.io.gfile.get_registered_schemes())


def tf_can_read(path: str | pathlib.Path) -> bool:
    """False where tf.io.gfile cannot serve `path` here: an unregistered scheme, or gs:// under an emulator."""
    if not is_uri(path):
        return True
    name = scheme(path)
    if name == "gs" and os.environ.get(EMULATOR_ENV):
        return False
    return name in _tf_schemes()


def _filesystems():
    """Beam's FileSystems; under the GCS emulator, without the credential lookup that cannot succeed there.

    Beam asks google.auth for default credentials with 4 retries (~20 s of
    backoff) before it connects anonymously; an emulator needs none, so the
    anonymous result is recorded up front (Beam's process-wide credential cache, a
    private API with no public equivalent: tests/test_pinned_private_apis.py fails,
    naming this function, when a Beam upgrade changes it).
    """
    from apache_beam.io.filesystems import FileSystems

    if os.environ.get(EMULATOR_ENV):
        from apache_beam.internal.gcp import auth

        creds = getattr(auth, "_Credentials", None)
        if creds is not None and not getattr(creds, "_credentials_init", True):
            creds._credentials = None
            creds._credentials_init = True
    return FileSystems


def _uncompressed():
    # AUTO (Beam's default) would gzip a `.gz` object on write and inflate it on read.
    from apache_beam.io.filesystem import CompressionTypes

    return CompressionTypes.UNCOMPRESSED


def _local_objects(prefix: str) -> dict[str, tuple[int, float]]:
    """Every file whose path starts with `prefix` (hidden ones too, unlike Beam's local glob)."""
    parent, start = os.path.split(prefix)
    found: dict[str, tuple[int, float]] = {}
    if not os.path.isdir(parent):
        return found
    for entry in os.scandir(parent):
        if not entry.name.startswith(start):
            continue
        paths = [entry.path] if entry.is_file() else [
            os.path.join(root, name) for root, _, names in os.walk(entry.path) for name in names
        ]
        for path in paths:
            stat = os.stat(path)
            found[path] = (stat.st_size, stat.st_mtime)
    return found


def objects_under(prefix: str) -> dict[str, tuple[int, float]]:
    """Path -> (size, last update in epoch seconds) of every object whose path starts with `prefix`."""
    if not is_uri(prefix):
        return _local_objects(os.path.abspath(prefix) + ("/" if prefix.endswith("/") else ""))
    result = _filesystems().match([prefix + "**"])[0]
    return {m.path: (m.size_in_bytes, m.last_updated_in_seconds)
            for m in result.metadata_list if m.path.startswith(prefix)}


def list_objects(uri: str | pathlib.Path) -> dict[str, int]:
    """Relative name -> size of every object under the prefix (or local directory) `uri/`."""
    prefix = str(uri).rstrip("/") + "/"
    if not is_uri(prefix):
        prefix = os.path.abspath(prefix) + "/"
    return {path[len(prefix):]: size for path, (size, _) in objects_under(prefix).items()}


def read_bytes(uri: str, limit: int = -1) -> bytes:
    """The object at `uri` (the small marker and stats files), or its first `limit` bytes."""
    with _filesystems().open(uri, compression_type=_uncompressed()) as handle:
        return handle.read(limit)


def write_bytes(uri: str, data: bytes) -> None:
    """Writes one object whole (an object store makes it visible at close; a local file is renamed into place)."""
    if not is_uri(uri):
        with atomic_path(uri) as tmp:
            tmp.write_bytes(data)
        return
    with _filesystems().create(uri, mime_type="application/octet-stream", compression_type=_uncompressed()) as dst:
        dst.write(data)


def _copy_stream(src, dst) -> int:
    copied = 0
    while chunk := src.read(_CHUNK):
        dst.write(chunk)
        copied += len(chunk)
    return copied


def copy_objects(src: str, dst: str, names: list[str]) -> None:
    """Copies `src/NAME` to `dst/NAME` for each name: server-side within one filesystem, streamed across two."""
    if not names:
        return
    fs = _filesystems()
    sources, targets = [f"{src}/{n}" for n in names], [f"{dst}/{n}" for n in names]
    if scheme(src) != scheme(dst):
        for source, target in zip(sources, targets, strict=True):
            with fs.open(source, compression_type=_uncompressed()) as reader, fs.create(
                target, mime_type="application/octet-stream", compression_type=_uncompressed()
            ) as writer:
                _copy_stream(reader, writer)
        return
    if not is_uri(dst):
        for target in targets:
            os.makedirs(os.path.dirname(target), exist_ok=True)
    # FileSystems.copy, not rename: GCS renames in batches of copies that the emulator
    # answers 404, and a rename is a copy plus a delete there anyway (the caller deletes src).
    fs.copy(sources, targets)


def delete_objects(uri: str, names: list[str]) -> None:
    """Deletes `uri/NAME` for each name (one batched call on object stores)."""
    if names:
        _filesystems().delete([f"{uri}/{n}" for n in names])


def delete_prefix(uri: str) -> None:
    """Deletes everything under the prefix (or local directory) `uri/`."""
    if not is_uri(uri):
        shutil.rmtree(uri, ignore_errors=True)
        return
    delete_objects(uri, sorted(list_objects(uri)))


def _download(uri: str, local: pathlib.Path, size: int) -> None:
    local.parent.mkdir(parents=True, exist_ok=True)
    with _filesystems().open(uri, compression_type=_uncompressed()) as src, local.open("wb") as dst:
        copied = _copy_stream(src, dst)
    if copied != size:
        raise OSError(f"staging {uri}: read {copied} bytes, the store lists {size}; retry")


def check_target(uri: str, overwrite: bool) -> dict[str, int]:
    """UsageError unless the prefix is empty or (with --overwrite) a finished run; its objects."""
    try:
        _filesystems().get_filesystem(uri)
    except ValueError:
        raise UsageError(
            f"--output {uri}: no Beam filesystem serves the scheme {scheme(uri)!r} here "
            "(gs:// needs apache-beam[gcp], installed by requirements.lock; s3:// needs apache-beam[aws]); "
            "give a local path or a supported URI"
        ) from None
    objects = list_objects(uri)
    if not objects:
        return objects
    if DONE_FILE not in objects:
        raise UsageError(
            f"output {uri} holds {len(objects)} objects but no finished pipeline run (no {DONE_FILE}); "
            "--overwrite only replaces a finished run: delete the prefix or choose another --output"
        )
    if not overwrite:
        raise UsageError(
            f"output {uri} holds a finished run; pass --overwrite to replace it or choose another --output"
        )
    return objects


def check_tf_writes(uri: str, why: str) -> None:
    """UsageError where tf.io.gfile cannot write `uri` here: TFT would fail mid-job writing the transform graph."""
    if tf_can_read(uri):
        return
    name = scheme(uri)
    reason = (
        f"TensorFlow's gs:// client cannot be pointed at the emulator in {EMULATOR_ENV}" if name == "gs"
        else f"tf.io.gfile serves no {name}:// here (tensorflow-io's plugin does not load with TF 2.21)"
    )
    raise UsageError(
        f"--output {uri} {why}: TFT writes the transform graph and its temp files through tf.io.gfile, "
        f"and {reason}; give a gs:// output on GCP, or --write_mode=staged (the output is built in this "
        "machine's TMPDIR and then uploaded, so the Beam workers must share that disk)"
    )


def publish(src: str | pathlib.Path, uri: str, overwrite: bool = False) -> None:
    """Copies a finished output (a local dir or a direct run's scratch prefix) to `uri`: every object, DONE.json last.

    A replaced run loses its marker before anything else changes, so readers
    refuse the prefix from the first deleted object to the new marker. The
    caller removes `src` afterwards.
    """
    source = str(src).rstrip("/")
    if not is_uri(source):
        source = os.path.abspath(source)
    uri = uri.rstrip("/")
    objects = list_objects(source)
    if DONE_FILE not in objects:
        raise UsageError(f"{source} is not a finished pipeline output (no {DONE_FILE}); nothing published to {uri}")
    old = check_target(uri, overwrite)
    if old:
        delete_objects(uri, [DONE_FILE])
        delete_objects(uri, sorted(name for name in old if name != DONE_FILE))
    copy_objects(source, uri, sorted(name for name in objects if name != DONE_FILE))
    copy_objects(source, uri, [DONE_FILE])


def default_cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "optfusion" / "outputs")


def _marker(uri: str, objects: dict[str, int]) -> bytes:
    if DONE_FILE not in objects:
        raise DatasetInfoError(
            f"{uri} is not a finished pipeline output: its {DONE_FILE} marker, written last, is missing "
            "(an interrupted run or another prefix; run `pipeline ... --output URI` to completion first)"
        )
    return read_bytes(f"{uri}/{DONE_FILE}")


def stage(uri: str, cache_root: str | pathlib.Path | None = None) -> pathlib.Path:
    """A local copy of the finished output at `uri`, reused while its DONE.json is unchanged.

    DatasetInfoError without the marker; OSError if the run was replaced while it was copied.
    Several processes may stage the same run at once: each copies into its own
    scratch dir and the first rename wins.
    """
    uri = uri.rstrip("/")
    objects = list_objects(uri)
    marker = _marker(uri, objects)
    root = pathlib.Path(cache_root) if cache_root is not None else default_cache_root()
    key = hashlib.sha256(uri.encode() + b"\n" + marker).hexdigest()[:16]
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", uri.split("://", 1)[-1])[-80:]
    target = root / f"{label}-{key}"
    if (target / DONE_FILE).is_file() and (target / DONE_FILE).read_bytes() == marker:
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = root / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        for name, size in sorted(objects.items()):
            if name != DONE_FILE:
                _download(f"{uri}/{name}", scratch / name, size)
        if read_bytes(f"{uri}/{DONE_FILE}") != marker:
            raise OSError(f"{uri} was replaced while it was staged to {target}; retry")
        (scratch / DONE_FILE).write_bytes(marker)
        try:
            scratch.rename(target)
        except OSError:
            if not (target / DONE_FILE).is_file():  # not a concurrent stager's finished copy
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def local_view(data_dir: str | pathlib.Path, cache_root: str | pathlib.Path | None = None) -> str | pathlib.Path:
    """`data_dir` as the trainer and export should open it: unchanged if TF reads it here, else staged."""
    if tf_can_read(data_dir):
        return data_dir
    return stage(str(data_dir), cache_root)
