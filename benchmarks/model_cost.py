"""Parameters and forward FLOPs per example of the benchmark's models, at train_bench's shape and the paper's.

docs/SCALING.md sizes the paper's setting (emb 40, att_dim = d) from the
step rate train_bench.py measured at emb 16, att_dim 64: that is a ratio of
costs per example, counted here without training (a step at the paper's
shape takes minutes on 2 cores). TensorFlow's profiler counts the float
operations of one example's forward pass through the frozen graph of each
model (Criteo's 39 fields, train_bench's 1.31M ids); a train step costs about
3x its forward pass in both shapes.

  python benchmarks/model_cost.py [--no-write]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.train_bench import FIELDS, VOCABS, bench_model  # noqa: E402

SHAPES = {"train_bench (emb 16, att_dim 64)": (16, 64), "paper (emb 40, att_dim = d = 1560)": (40, None)}


def forward_flops(model: keras.Model) -> int:
    """Float operations of one example's forward pass (TF's profiler on the frozen graph)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = {name: tf.TensorSpec([1], tf.int64, name=name) for name in FIELDS}
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(convert_variables_to_constants_v2(concrete).graph,
                                         options=options).total_float_ops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    from trainer.config import Config, TrainConfig
    from trainer.model.supernet import SupernetConfig

    rows = []
    for shape, (emb, att) in SHAPES.items():
        config = Config(model=SupernetConfig(n=3, emb_dim=emb, att_dim=att), train=TrainConfig(batch_size=1))
        for kind in ("search", "soft"):
            model = bench_model(kind, config)
            params, embedding = int(model.count_params()), sum(VOCABS) * emb
            rows.append((shape, kind, params, params - embedding, forward_flops(model)))
            print(rows[-1], flush=True)
    base = {kind: flops for shape, kind, *_, flops in rows if shape == next(iter(SHAPES))}
    table = ["| shape | model | parameters | dense (not embedding) | forward FLOPs per example | x train_bench |",
             "|---|---|---|---|---|---|"]
    table += [f"| {shape} | {kind} | {params:,} | {dense:,} | {flops:,} | {flops / base[kind]:.1f} |"
              for shape, kind, params, dense, flops in rows]
    print("\n".join(table))
    if not args.no_write:
        from benchmarks.results import header, write_section

        body = (header() + f"- setup: Criteo schema (39 fields, {sum(VOCABS):,} ids: train_bench's), n = 3; search = "
                "the supernet, soft = every edge on, all four ops mixed; counted, not timed\n\n" + "\n".join(table))
        print(f"wrote {write_section('Model cost per example (counted)', body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
