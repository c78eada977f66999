"""Beam runners the job refuses up front, because they would publish a wrong or incomplete output.

Beam 2.77's DaskRunner (`apache_beam.runners.dask.dask_runner.DaskRunner`) was
run here on a dask.distributed LocalCluster (2 worker processes, 127.0.0.1).
The workers read and parse, then the job dies on a missing
`_partial_stats/inputs.json`. Its translation to dask bags loses data in three
ways, each reproduced by a 10-element pipeline in scripts/dask_runner_probe.py
(rerun it after a Beam upgrade; the DirectRunner passes all three):
1. `run_pipeline` computes only the bag of the last transform visited
   (`list(bags.values())[-1]`): every other sink is never run;
2. a multi-output ParDo's tags are dropped: every consumer of one tag gets
   the elements of all tags;
3. `apply_dofn_to_bundle` collects a DoFn's outputs before `finish_bundle`:
   what a DoFn emits there is lost, so Beam's file sinks (WriteToText,
   fileio.WriteToFiles) report no written file ("No shards found to finalize").
"""

from __future__ import annotations

from pipeline.errors import UsageError

# What to use instead of a refused runner (BUILD.md §"The Beam job" has the flags of each).
ALTERNATIVES = (
    "use the DirectRunner on one machine (--direct_running_mode=multi_processing --direct_num_workers=N), "
    "or DataflowRunner, FlinkRunner or SparkRunner on a cluster (BUILD.md, \"The Beam job\")"
)
# Refused runners by `runner_key`, with why.
REFUSED = {
    "dask": (
        "Beam 2.77's DaskRunner loses data in this job: it runs only the last of the pipeline's sinks (the "
        "TFRecords of other splits and the row counts are never written: the missing _partial_stats/inputs.json), "
        "it hands every output of a multi-output step (train, valid, test, rejected rows) to each consumer, and it "
        "drops what a step emits when a bundle finishes (Beam's file writes: \"No shards found to finalize\")"
    ),
}


def runner_key(name: str) -> str:
    """A runner's name as Beam resolves it, in any spelling: "DaskRunner", "dask", a dotted path -> "dask"."""
    return name.rsplit(".", 1)[-1].lower().removesuffix("runner")


def check_runner(name: str) -> None:
    """UsageError naming the reason and the alternatives if `name` is a refused runner (`REFUSED`)."""
    reason = REFUSED.get(runner_key(name))
    if reason is not None:
        raise UsageError(f"--runner {name}: refused. {reason}; {ALTERNATIVES}")
