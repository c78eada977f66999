"""`serving push` and `serving rollback`: the daily loop's last step (TFX Pusher's semantics).

push: a run is exported only with a BLESSED blessing.json naming it
(`trainer --stage=evaluate --candidate RUN`); the export itself is
`serving.export.export` (next version, built in a hidden dir beside the
versions, verified under the session loader, then renamed). Afterwards only
the newest `keep` versions stay, never removing the highest one or one that
BASE/models.config names (a version label or a `specific` version policy).
An old version is first renamed to a hidden name (a server's file-system poll
never sees half of it), then deleted.

rollback: TF Serving (and `serving serve`) serve the HIGHEST version under the
default version policy (`latest { num_versions: 1 }`), and deleting the
served version under a live server is unsafe. So a rollback never deletes:
it copies the chosen older version (hard links where the file system allows)
into a NEW, higher version dir, built beside and renamed atomically, and the
servers switch to it on their next poll. BASE/NAME/ROLLBACK.json records each
rollback (new version, its source, the version it replaced). The alternative
is to pin the version in models.config, `model_version_policy { specific {
versions: N } }`, which the servers read with --model_config_file_poll_wait_seconds.
"""

from __future__ import annotations

import dataclasses
import datetime
import filecmp
import json
import os
import pathlib
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from pipeline.atomic import write_text_atomic
from pipeline.errors import UsageError
from serving import configs

if TYPE_CHECKING:
    from serving.export import ExportResult

# serving.export (TensorFlow) is imported where used: `serving --help` shows DEFAULT_KEEP before TF loads.
ROLLBACK_FILE = "ROLLBACK.json"
DEFAULT_KEEP = 3
_SAVED_MODEL = "saved_model.pb"


class PushError(UsageError):
    """push or rollback refused (no blessing, bad version, nothing to roll back to); nothing was written."""


@dataclasses.dataclass(frozen=True)
class PushResult:
    export: ExportResult
    removed: tuple[int, ...]
    protected: tuple[int, ...]
    blessing: str


@dataclasses.dataclass(frozen=True)
class RollbackResult:
    version: int
    source: int
    replaced: int
    history: pathlib.Path


def pinned_versions(base: pathlib.Path, model_name: str) -> set[int]:
    """Versions BASE/models.config names for the model: version labels and a `specific` policy."""
    path = base / configs.MODELS_CONFIG
    if not path.exists():
        return set()
    config = configs.read_models_config(path)
    pinned: set[int] = set()
    for model in config.model_config_list.config:
        if model.name == model_name:
            pinned |= set(model.version_labels.values())
            pinned |= set(model.model_version_policy.specific.versions)
    return pinned


def prune(model_dir: pathlib.Path, keep: int, pinned: set[int]) -> list[int]:
    """Deletes all but the newest `keep` versions, the highest and the pinned ones; the deleted."""
    from serving.export import versions

    existing = versions(model_dir)
    stay = set(existing[-keep:]) | set(existing[-1:]) | pinned
    removed = [v for v in existing if v not in stay]
    for version in removed:
        hidden = pathlib.Path(tempfile.mkdtemp(prefix=f".delete-{version}-", dir=model_dir))
        (model_dir / str(version)).rename(hidden / str(version))  # gone for a poll at once, then deleted
        shutil.rmtree(hidden)
    return removed


def push(run_dir: str, blessing_file: str, data_dir: str, model_base_path: str, model_name: str,
         keep: int = DEFAULT_KEEP, **export_options: Any) -> PushResult:
    """Exports a blessed run as the next version (serving.export.export), then keeps `keep` versions."""
    from serving.export import export
    from trainer.blessing import is_blessed

    if keep < 1:
        raise PushError(f"--keep must be >= 1. Received: {keep}")
    blessed, why = is_blessed(pathlib.Path(blessing_file), pathlib.Path(run_dir))
    if not blessed:
        raise PushError(f"{why}; bless it first with `trainer --stage=evaluate "
                        f"--candidate {run_dir} --baseline SERVED --data NEW`; nothing was written")
    base = pathlib.Path(model_base_path)
    result = export(run_dir, data_dir, model_base_path, model_name, **export_options)
    pinned = pinned_versions(base, model_name)
    removed = prune(base / model_name, keep, pinned)
    return PushResult(result, tuple(removed), tuple(sorted(pinned)), why)


def _history(model_dir: pathlib.Path) -> list[dict[str, Any]]:
    path = model_dir / ROLLBACK_FILE
    if not path.exists():
        return []
    try:
        history = json.loads(path.read_text())
        assert isinstance(history, list)
        return history
    except (ValueError, AssertionError) as err:
        raise PushError(f"{path} is not a rollback history (a JSON list); fix or remove it") from err


def _same_model(a: pathlib.Path, b: pathlib.Path) -> bool:
    return filecmp.cmp(a / _SAVED_MODEL, b / _SAVED_MODEL, shallow=False)


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (no bytes copied; files of a version are never modified), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def rollback(model_base_path: str, model_name: str, to: int | None = None) -> RollbackResult:
    """Serves an older version again by publishing a copy of it as the next, highest version.

    Default `to`: the newest version below the served (highest) one that does not hold the
    served model and that no earlier rollback replaced (a bad version stays skipped).
    """
    from serving.export import versions

    model_dir = pathlib.Path(model_base_path) / model_name
    existing = versions(model_dir)
    if not existing:
        raise PushError(f"{model_dir} holds no versions: nothing to roll back")
    served = existing[-1]
    history = _history(model_dir)
    if to is None:
        replaced = {int(h["replaced"]) for h in history}
        older = [v for v in existing[:-1] if v not in replaced
                 and not _same_model(model_dir / str(v), model_dir / str(served))]
        if not older:
            raise PushError(f"{model_dir}: no older version to roll back to (versions {existing}, "
                            f"served {served}); pass --to VERSION")
        to = older[-1]
    elif to not in existing:
        raise PushError(f"--to {to}: {model_dir} holds versions {existing}")
    elif to == served:
        raise PushError(f"--to {to} is already the served (highest) version")
    new = served + 1
    if (model_dir / str(new)).exists():
        raise PushError(f"{model_dir / str(new)} exists without a saved_model.pb: remove it first")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".rollback-{new}-", dir=model_dir))
    try:
        staged = tmp / str(new)
        shutil.copytree(model_dir / str(to), staged, copy_function=_link_or_copy)
        staged.chmod(0o755)
        staged.rename(model_dir / str(new))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record = {"version": new, "source": to, "replaced": served,
              "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    write_text_atomic(model_dir / ROLLBACK_FILE, json.dumps([*history, record], indent=1) + "\n")
    return RollbackResult(new, to, served, model_dir / ROLLBACK_FILE)
