"""Facts shared by the preprocessing job and its readers, each written down once.

Like TFX's `features.py`: names and numbers only, no logic, cheap to import
(the CLIs import it before TensorFlow loads). The rules behind them are in
docs/DESIGN.md §Preprocessing; `tests/pipeline/test_features.py` checks that
every copy a reader keeps (stats.json, the trainer, the CLI) lines up.
"""

from __future__ import annotations

LABEL_KEY = "label"

# Written last into every finished `pipeline` output (a run summary); readers and
# --overwrite take a directory as a finished run only when it is there.
DONE_FILE = "DONE.json"
# Per-field value distributions of every run (pipeline.distributions), what `pipeline validate` compares.
DISTRIBUTIONS_FILE = "distributions.json"

# The hashed 8:1:1 split, in this order (the split index in pipeline.parse).
SPLIT_NAMES = ("train", "valid", "test")

# How rows are assigned to SPLIT_NAMES (`pipeline --split`): a keyed hash of the row,
# the input file (SPLIT=PATH), or the order of a time field.
SPLIT_MODES = ("hash", "given", "time")
# The one split of a `pipeline transform` output.
DATA_SPLIT = "data"

# Id layout of every transformed field: 0 = out of vocabulary, 1 = missing,
# 2.. = values seen in the training split, most frequent first.
OOV_ID = 0
MISSING_ID = 1
FIRST_VALUE_ID = 2

# Serving flags a row as foreign (not like the training data) when more than this
# fraction of its categorical fields are out of vocabulary (the `oov_fraction` output).
MOSTLY_OOV_FRACTION = 0.5

# Vocabulary keys carry their field index in FIELD_INDEX_BITS bits (see
# pipeline.transform), which bounds the number of fields of a dataset.
FIELD_INDEX_BITS = 8
MAX_FIELDS = 1 << FIELD_INDEX_BITS


def id_layout() -> dict[str, int]:
    """The id layout as stats.json records it."""
    return {"oov": OOV_ID, "missing": MISSING_ID, "first_value": FIRST_VALUE_ID}
