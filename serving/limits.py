"""The server's row limits, each written once, in a module that imports no TensorFlow.

`serving/cli.py` shows them as flag defaults before TensorFlow loads (a fast
`serving --help`); the servable and the session loader apply them.
"""

from __future__ import annotations

# Rows one request may carry: ~1 s of a CPU-preset model on 2 cores (50,000 rows took 7 s).
DEFAULT_MAX_ROWS = 8192
# Batches of at most this many rows run in the calling thread (`SessionModel.callable`).
CALLER_THREAD_ROWS = 4
