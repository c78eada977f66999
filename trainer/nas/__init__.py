"""Whole-architecture search, the paper's rivals of OptFusion (table 3, figure 2): AutoCTR and NASRec.

Both search the same block space (trainer/nas/space.py: a DAG of choice
blocks, each a dense and a sparse node fed by any earlier blocks) and write
a `NasArchitecture` to RUN/architecture.json, which `trainer retrain
--architecture RUN/architecture.json` trains like any other design over the
same embeddings, batch size and data (trainer/nas/blocks.py `NasNet`):

- autoctr (trainer/nas/autoctr.py): regularized evolution, each candidate
  trained from scratch on a subsample of the train split;
- nasrec (trainer/nas/nasrec.py): one weight-sharing supernet trained with
  any-path sampling, then regularized evolution over its subnets scored on
  the validation split with the shared weights.

This package's __init__ imports no Keras: the CLI lists the methods before
TensorFlow loads. docs/NAS.md says what each keeps from its paper and what it
reduces for CPU budgets.
"""

from __future__ import annotations

OPTFUSION_METHOD = "optfusion"
METHODS = (OPTFUSION_METHOD, "autoctr", "nasrec")
"""`trainer search --method` values; the first is the one-shot supernet search (trainer/stages.py)."""
NAS_METHODS = METHODS[1:]
