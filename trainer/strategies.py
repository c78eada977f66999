"""The tf.distribute strategies a run can name, written once, in a module that imports no TensorFlow.

trainer/distribute.py builds them; the CLI's `--strategy` choices and the
config's `train.strategy` type read them here, so `trainer --help` and config
checks stay fast (docs/SCALING.md says which to use where).
"""

from __future__ import annotations

import typing
from typing import Literal

Strategy = Literal["default", "mirrored", "multi_worker", "parameter_server"]
STRATEGIES: tuple[str, ...] = typing.get_args(Strategy)
# parameter_server: a variable of 2x this is split over the ps tasks (MinSizePartitioner's default).
PS_MIN_SHARD_BYTES = 256 << 10
