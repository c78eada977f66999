"""The fingerprint of a run's transform graph: which id means which token.

A model is trained on ids, and ids only mean something through the graph that
made them: another run of the same schema (another seed, other files) has
other vocabularies, so the same ids stand for other tokens and a model scores
its data without an error, just wrongly. Every reader of transformed data
therefore compares this fingerprint (docs/DESIGN.md §1, the run contract).

It is content-based: sha256 over the fields (name, vocab_size, max_len, in
model order), every file under `transform_fn/assets/` (the vocabularies), the
transformed schema (each field's id range) and the constants of
`transform_fn/saved_model.pb`: TFT folds analyzer results such as quantile
boundaries into the graph as constants. The graph file itself differs from
run to run (function names), its constants do not, so they enter as a sorted
multiset. Two runs with the same vocabularies and buckets agree; another
seed's run differs. A `pipeline` run records it in stats.json and DONE.json
(`pipeline.dataset_info.FINGERPRINT_KEY`), a `pipeline transform` output carries its source run's,
a trainer run records the one it trained on in run.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Iterable, Sequence

from pipeline.dataset_info import DatasetInfo, FieldInfo, is_uri, join

ASSETS_DIR = "transform_fn/assets/"
SCHEMA_FILE = "transformed_metadata/schema.pbtxt"
GRAPH_FILE = "transform_fn/saved_model.pb"
_VERSION = b"optfusion transform fingerprint v1\n"

Reader = Callable[[str], bytes]  # a file name relative to the run dir -> its bytes


def graph_files(names: Iterable[str]) -> list[str]:
    """The names (relative to a run dir, `/`-separated) that enter the fingerprint, sorted."""
    return sorted(n for n in names if n.startswith(ASSETS_DIR) or n in (SCHEMA_FILE, GRAPH_FILE))


def _graph_constants(saved_model: bytes) -> bytes:
    """The Const tensors of every graph and function of a SavedModel, as one sorted byte string."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel.FromString(saved_model)
    tensors = []
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        for nodes in (graph.node, *(f.node_def for f in graph.library.function)):
            tensors += [n.attr["value"].tensor.SerializeToString(deterministic=True) for n in nodes if n.op == "Const"]
    return b"".join(len(t).to_bytes(8, "big") + t for t in sorted(tensors))


def compute(fields: Sequence[FieldInfo], names: Iterable[str], read: Reader) -> str:
    """The fingerprint of a run whose files are `names`, read by `read`; ValueError without a graph."""
    files = graph_files(names)
    if GRAPH_FILE not in files:
        raise ValueError(f"no {GRAPH_FILE}: not the output of a transform graph")
    digest = hashlib.sha256(_VERSION)
    digest.update(json.dumps([[f.name, f.vocab_size, f.max_len] for f in fields]).encode())
    for name in files:
        data = read(name)
        content = hashlib.sha256(_graph_constants(data) if name == GRAPH_FILE else data).hexdigest()
        digest.update(f"\n{name} {content}".encode())
    return digest.hexdigest()


def _names(data_dir: str | pathlib.Path) -> list[str]:
    """Every file under `data_dir`, relative and `/`-separated (a local path or a URI)."""
    if is_uri(data_dir):
        import tensorflow as tf

        prefix = str(data_dir).rstrip("/")
        return [join(root, f)[len(prefix) + 1:] for root, _, files in tf.io.gfile.walk(prefix) for f in files]
    base = pathlib.Path(data_dir)
    return [(pathlib.Path(root) / f).relative_to(base).as_posix() for root, _, files in os.walk(base) for f in files]


def _read(data_dir: str | pathlib.Path) -> Reader:
    if is_uri(data_dir):
        import tensorflow as tf

        def read(name: str) -> bytes:
            with tf.io.gfile.GFile(join(data_dir, name), "rb") as handle:
                return handle.read()

        return read
    return lambda name: (pathlib.Path(data_dir) / name).read_bytes()


def of_directory(data_dir: str | pathlib.Path, fields: Sequence[FieldInfo]) -> str | None:
    """The fingerprint computed from a data dir's files; None where it holds no transform graph."""
    names = _names(data_dir)
    if GRAPH_FILE not in names:
        return None
    return compute(fields, names, _read(data_dir))


def of_data(info: DatasetInfo) -> str | None:
    """The fingerprint of a data dir: recorded in its stats.json, or (older runs) computed from its
    graph; None for a directory without a graph (e.g. written by hand, as the trainer's test data)."""
    return info.fingerprint or of_directory(info.data_dir, info.fields)


def short(fingerprint: str | None) -> str:
    """The first 12 hex digits, for messages (None: "none recorded")."""
    return fingerprint[:12] if fingerprint else "none recorded"
