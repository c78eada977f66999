"""The block search space of AutoCTR and NASRec, and one point in it (a `NasArchitecture`).

Why free of Keras: the search, the retrain, the report and the tests read and
write architectures; only building a model needs TensorFlow (trainer/nas/blocks.py).

Layout (NASRec's choice blocks, the official code's `SuperNet`): node 0 is the
stem, the field embeddings as a dense vector [B, F * e] and as a sparse
tensor [B, F, e]. Block i = 1..N has a dense node (output [B, dense_dim]) and
a sparse node (output [B, F, e]), each running one op:

    dense ops   mlp, gating, crossnet, dot, fm     -> [B, dense_dim]
    sparse ops  efc, attention, cin, identity      -> [B, F, e]

Block i reads any non-empty subset of the dense outputs of nodes 0..i-1
(concatenated) and any non-empty subset of their sparse outputs (summed);
each op uses the inputs it needs (`READS`). The head is Dense(1) over block
N's dense output and flattened sparse output. Nodes without a path to the
head are not built.

Sampling (`sample_inputs`) is NASRec's any-path rule: the number of inputs is
uniform in 1..i, then that many distinct earlier nodes are drawn.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random
from typing import Any

from pipeline.atomic import write_text_atomic

DENSE_OPS = ("mlp", "gating", "crossnet", "dot", "fm")
SPARSE_OPS = ("efc", "attention", "cin", "identity")
READS: dict[str, tuple[str, ...]] = {
    "mlp": ("dense",), "gating": ("dense",), "crossnet": ("dense",), "dot": ("dense", "sparse"),
    "fm": ("sparse",), "efc": ("sparse",), "attention": ("sparse",), "cin": ("sparse",), "identity": ("sparse",),
}
"""Which inputs each op reads (cin also reads the stem's sparse output as its x0)."""

METHOD_OPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # AutoCTR's block types: MLP, CrossNet, dot product, FM; EFC and CIN over the embeddings.
    "autoctr": (("mlp", "crossnet", "dot", "fm"), ("efc", "cin", "identity")),
    # NASRec's xlarge space: linear-2d, sigmoid-gating, dot-product; linear-3d (EFC), transformer.
    "nasrec": (("mlp", "gating", "dot"), ("efc", "attention")),
}
"""(dense ops, sparse ops) each method searches over."""


@dataclasses.dataclass(frozen=True)
class Block:
    """One choice block: its two ops and the earlier nodes (0 = stem) each kind of input comes from."""

    dense_op: str
    sparse_op: str
    dense_in: tuple[int, ...]
    sparse_in: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"dense_op": self.dense_op, "sparse_op": self.sparse_op, "dense_in": list(self.dense_in),
                "sparse_in": list(self.sparse_in)}


@dataclasses.dataclass(frozen=True)
class NasArchitecture:
    """The blocks of a searched (or hand-written) design, and which method found it."""

    method: str
    blocks: tuple[Block, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ValueError("a NAS architecture needs at least one block")
        for i, b in enumerate(self.blocks, start=1):
            if b.dense_op not in DENSE_OPS or b.sparse_op not in SPARSE_OPS:
                raise ValueError(f"block {i}: ops must be a dense op of {DENSE_OPS} and a sparse op of "
                                 f"{SPARSE_OPS}. Received: {b.dense_op!r}, {b.sparse_op!r}")
            for kind, inputs in (("dense_in", b.dense_in), ("sparse_in", b.sparse_in)):
                if not inputs or list(inputs) != sorted(set(inputs)) or not all(0 <= j < i for j in inputs):
                    raise ValueError(f"block {i}: {kind} must be distinct increasing earlier nodes in 0..{i - 1}. "
                                     f"Received: {list(inputs)}")

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def reachable(self) -> set[tuple[str, int]]:
        """(kind, block) nodes with a path to the head, kind "dense" or "sparse", blocks 1..N (the stem excluded)."""
        seen: set[tuple[str, int]] = set()
        todo = [("dense", self.num_blocks), ("sparse", self.num_blocks)]
        while todo:
            node = todo.pop()
            kind, i = node
            if i == 0 or node in seen:
                continue
            seen.add(node)
            block = self.blocks[i - 1]
            op = block.dense_op if kind == "dense" else block.sparse_op
            for read in READS[op]:
                todo += [(read, j) for j in (block.dense_in if read == "dense" else block.sparse_in)]
        return seen

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "method": self.method, "description": self.description,
                "blocks": [b.to_dict() for b in self.blocks]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NasArchitecture:
        if data.get("kind") != KIND:
            raise ValueError(f"not a NAS architecture (kind {data.get('kind')!r}, expected {KIND!r})")
        blocks = tuple(Block(str(b["dense_op"]), str(b["sparse_op"]), tuple(int(j) for j in b["dense_in"]),
                             tuple(int(j) for j in b["sparse_in"])) for b in data["blocks"])
        return cls(str(data["method"]), blocks, str(data.get("description", "")))

    def key(self) -> str:
        """A canonical string of the design (the blocks alone): equal designs, equal keys."""
        return json.dumps([b.to_dict() for b in self.blocks], sort_keys=True)

    def save(self, path: str | os.PathLike) -> None:
        """Writes JSON temp-then-rename."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> NasArchitecture:
        """Reads an architecture file with a one-line error naming the file."""
        try:
            return cls.from_dict(json.loads(pathlib.Path(path).read_text()))
        except FileNotFoundError:
            raise ValueError(f"architecture file {path} does not exist") from None
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(f"invalid NAS architecture file {path}: {err}") from None

    def render(self) -> str:
        """One line per block, pruned nodes marked."""
        keep = self.reachable()
        lines = [f"{self.method} architecture: {self.num_blocks} blocks, head on block {self.num_blocks}"]
        if self.description:
            lines.append(f"  {self.description}")
        for i, b in enumerate(self.blocks, start=1):
            dense = f"{b.dense_op}(dense {list(b.dense_in)}" + (f", sparse {list(b.sparse_in)})" if "sparse" in
                                                                READS[b.dense_op] else ")")
            sparse = f"{b.sparse_op}(sparse {list(b.sparse_in)})"
            mark = {kind: "" if (kind, i) in keep else " [pruned]" for kind in ("dense", "sparse")}
            lines.append(f"  block {i}: dense {dense}{mark['dense']}; sparse {sparse}{mark['sparse']}")
        return "\n".join(lines)


KIND = "nas"
"""architecture.json's `kind` for this format (OptFusion's files have none)."""


def is_nas_file(path: str | os.PathLike) -> bool:
    """True if `path` holds a NAS architecture (JSON with kind "nas"); any unreadable file is not one."""
    try:
        data = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("kind") == KIND


def sample_inputs(rng: random.Random, block: int) -> tuple[int, ...]:
    """NASRec's any-path rule for block `block` (1-based): k uniform in 1..block, then k distinct nodes 0..block-1."""
    k = rng.randint(1, block)
    return tuple(sorted(rng.sample(range(block), k)))


def random_architecture(rng: random.Random, method: str, num_blocks: int) -> NasArchitecture:
    """A uniformly sampled design of `method`'s ops and the any-path connections."""
    dense_ops, sparse_ops = METHOD_OPS[method]
    blocks = tuple(Block(rng.choice(dense_ops), rng.choice(sparse_ops), sample_inputs(rng, i), sample_inputs(rng, i))
                   for i in range(1, num_blocks + 1))
    return NasArchitecture(method, blocks)


def mutate(rng: random.Random, parent: NasArchitecture) -> NasArchitecture:
    """The parent with one block changed in one respect (an op or one kind of input), never the parent itself."""
    dense_ops, sparse_ops = METHOD_OPS[parent.method]
    for _ in range(100):
        i = rng.randrange(parent.num_blocks)
        b = parent.blocks[i]
        what = rng.choice(("dense_op", "sparse_op", "dense_in", "sparse_in"))
        if what == "dense_op":
            child = dataclasses.replace(b, dense_op=rng.choice(dense_ops))
        elif what == "sparse_op":
            child = dataclasses.replace(b, sparse_op=rng.choice(sparse_ops))
        elif what == "dense_in":
            child = dataclasses.replace(b, dense_in=sample_inputs(rng, i + 1))
        else:
            child = dataclasses.replace(b, sparse_in=sample_inputs(rng, i + 1))
        if child != b:
            blocks = (*parent.blocks[:i], child, *parent.blocks[i + 1:])
            return NasArchitecture(parent.method, blocks)
    return random_architecture(rng, parent.method, parent.num_blocks)  # a one-design space: nothing to mutate
