"""Re-checks, after a Beam or Dask upgrade, the three DaskRunner defects that make `pipeline` refuse it.

pipeline/runners.py refuses `--runner=DaskRunner` for three ways Beam 2.77's
DaskRunner loses data. Each is one 10-element pipeline here, run on a
dask.distributed LocalCluster of 2 worker processes on 127.0.0.1 (started and
closed by this script). Exit 0 when all three give the DirectRunner's answer
(then try the real job on the DaskRunner and lift the refusal), 1 otherwise.
Needs dask[distributed], which the project does not install:

    pip install --target /tmp/daskpkgs 'dask[distributed]'
    PYTHONPATH=/tmp/daskpkgs:. python scripts/dask_runner_probe.py
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
NUMBERS = list(range(10))


def _save(path: pathlib.Path):
    """A Map that writes the one list it gets to `path` as JSON (the probe's only observable output)."""
    def write(values: list) -> None:
        path.write_text(json.dumps(sorted(values)))
    return write


def _parity(x: int):
    yield beam.pvalue.TaggedOutput("even" if x % 2 == 0 else "odd", x)


class _CountAtFinish(beam.DoFn):
    """Emits only in finish_bundle, as Beam's file sinks emit their written files."""

    def start_bundle(self):
        self.count = 0

    def process(self, x):
        self.count += 1

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        yield WindowedValue(self.count, 0, (GlobalWindow(),))


def _two_sinks(numbers, out: pathlib.Path) -> None:
    _ = numbers | "FirstSink" >> beam.combiners.ToList() | "SaveFirst" >> beam.Map(_save(out / "first.json"))
    _ = numbers | "LastSink" >> beam.combiners.ToList() | "SaveLast" >> beam.Map(_save(out / "last.json"))


def _one_tag(numbers, out: pathlib.Path) -> None:
    parts = numbers | "Parity" >> beam.ParDo(_parity).with_outputs("even", "odd")
    _ = parts.even | "Evens" >> beam.combiners.ToList() | "SaveEven" >> beam.Map(_save(out / "even.json"))


def _at_finish(numbers, out: pathlib.Path) -> None:
    counts = numbers | "AtFinish" >> beam.ParDo(_CountAtFinish()) | "Counts" >> beam.combiners.ToList()
    _ = counts | "SaveCounts" >> beam.Map(_save(out / "counts.json"))


def _run(address: str, out: pathlib.Path) -> None:
    """One pipeline per defect, each with the sink it checks last (the one sink the DaskRunner always runs)."""
    options = PipelineOptions([f"--runner={DASK_RUNNER}", f"--dask_client_address={address}"])
    for build in (_two_sinks, _one_tag, _at_finish):
        p = beam.Pipeline(options=options)
        build(p | "Numbers" >> beam.Create(NUMBERS), out)
        result = p.run()
        result.wait_until_finish()
        result.client.close()  # the runner opens a client per pipeline and leaves it open


def _read(path: pathlib.Path):
    return json.loads(path.read_text()) if path.exists() else None


def main() -> int:
    from dask.distributed import LocalCluster

    out = pathlib.Path(tempfile.mkdtemp(prefix="dask-probe-"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        _run(cluster.scheduler_address, out)
    first, last, even, counts = (_read(out / f"{name}.json") for name in ("first", "last", "even", "counts"))
    checks = {  # what / expected / got
        "the last sink runs (the probe itself works)": (NUMBERS, last),
        "every sink runs, not only the last": (NUMBERS, first),
        "a consumer of tag 'even' gets only that tag's elements": (NUMBERS[::2], even),
        "what a DoFn emits in finish_bundle is kept (summed counts)": (len(NUMBERS), counts and sum(counts)),
    }
    for what, (expected, got) in checks.items():
        print(f"ok   {what}" if got == expected else f"FAIL {what}: expected {expected}, got {got}")
    return 0 if all(expected == got for expected, got in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
