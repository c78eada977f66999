"""Beam's DaskRunner with the four defects fixed that lose or corrupt this job's data on a dask.distributed cluster.

Beam 2.77's DaskRunner (`apache_beam.runners.dask.dask_runner.DaskRunner`)
translates each transform to a dask bag. As shipped it
1. computes only the bag of the last transform it visits: every other sink
   never runs (the job died on a missing `_partial_stats/inputs.json`);
2. drops a multi-output ParDo's tags: each consumer of one tag gets the
   elements of all tags (train would be analyzed on valid, test and rejected rows);
3. collects a DoFn's outputs before `finish_bundle`: what a DoFn emits there
   is lost, Beam's file sinks' written files among them ("No shards found to finalize");
4. recomputes a side input's whole upstream inside every task that reads it:
   TFT's analysis reruns per task and writes its graph to a new temp dir each
   time, which TFT's per-process graph cache rejects (an AssertionError in
   tensorflow_transform/beam/impl.py).
`DaskRunner` here keeps Beam's translations of Create, GroupByKey and
Flatten and its option parsing, and replaces the rest: a ParDo's bundle
returns (tag, value) pairs after `finish_bundle` and each consumer keeps its
tag; a PCollection read as a side input is computed once on the cluster,
before its first consumer, and reused by every consumer; every leaf is
computed, in one graph. Global windows only (batch jobs such as this one).
`tests/pipeline/test_dask_runner.py` runs each defect on Beam's runner (still
there: the patch is needed) and on this one, and the job on both runners.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import dask.bag as db
from apache_beam import pvalue
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, Receiver, _OutputHandler
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask import transform_evaluator as evaluators
from apache_beam.runners.dask.overrides import dask_overrides
from apache_beam.transforms.sideinputs import SideInputMap


class _TagReceiver(Receiver):
    """Appends (tag, value) of every output to the bundle's list; tag None is the main output."""

    def __init__(self, tag: str | None, out: list):
        self.tag, self.out = tag, out

    def receive(self, windowed_value) -> None:
        self.out.append((self.tag, windowed_value.value))


class _Receivers(dict):
    """One `_TagReceiver` per tag, made on first use (a DoFn may emit tags its ParDo never declared)."""

    def __init__(self, out: list):
        super().__init__()
        self.out = out

    def __missing__(self, tag):
        self[tag] = _TagReceiver(tag, self.out)
        return self[tag]


def _run_bundle(items, transform: beam.ParDo, window_fn, side_inputs, args: list, kwargs: dict) -> list:
    """One dask partition through the DoFn as one bundle: its (tag, value) outputs, finish_bundle's included."""
    out: list = []
    receivers = _Receivers(out)
    handler = _OutputHandler(
        window_fn=window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
        per_element_output_counter=None, output_batch_converter=None,
        process_yields_batches=False, process_batch_yields_elements=False,
    )
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(transform.fn), handler, context=DoFnContext(transform.label, state=None),
        side_inputs=side_inputs, input_args=args, input_kwargs=kwargs, user_state_context=None,
        bundle_finalizer_param=beam.DoFn.BundleFinalizerParam(),
    )
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(item)
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    return out


def _select(pairs: list, tag: str | None) -> list:
    return [value for t, value in pairs if t == tag]


def _count(partition: list) -> list[int]:
    """What a leaf returns to the launcher: its size, not its elements."""
    return [len(partition)]


class _Translator(PipelineVisitor):
    """Builds one dask bag per transform; ParDo bags hold (tag, value) pairs, read through `bag_of`."""

    def __init__(self, client, bag_kwargs: dict, side_pcolls: set):
        self.client, self.bag_kwargs, self.side_pcolls = client, bag_kwargs, side_pcolls
        self.bags: dict[AppliedPTransform, Any] = {}
        self.tagged: set[AppliedPTransform] = set()
        self.consumed: set[AppliedPTransform] = set()
        self.materialized: dict[pvalue.PCollection, db.Bag] = {}

    def bag_of(self, pcoll: pvalue.PCollection) -> db.Bag:
        """The bag of one PCollection: its tag of a ParDo's output; a side input computed once, then reused."""
        if pcoll in self.materialized:
            return self.materialized[pcoll]
        producer = pcoll.producer
        assert producer is not None, f"{pcoll} has no producing transform"
        bag = self.bags[producer]
        if producer in self.tagged:
            bag = bag.map_partitions(_select, pcoll.tag)
        if pcoll in self.side_pcolls:
            values = self.client.compute(bag).result()
            bag = self.materialized[pcoll] = db.from_sequence(values, npartitions=1)
        return bag

    def visit_transform(self, node: AppliedPTransform) -> None:
        inputs = [i for i in node.inputs if not isinstance(i, pvalue.PBegin) and i.producer in self.bags]
        self.consumed.update(i.producer for i in inputs)
        self.consumed.update(si.pvalue.producer for si in node.side_inputs)
        side_inputs = [
            SideInputMap(type(si), si._view_options(),  # type: ignore[arg-type]  # the view's class, as Beam's runner
                         evaluators.DaskBagWindowedIterator(self.bag_of(si.pvalue), si._window_mapping_fn))
            for si in node.side_inputs
        ] or None
        bags = [self.bag_of(i) for i in inputs]
        if type(node.transform) is beam.ParDo:  # exactly: Beam's GroupByKey expansion has a ParDo subclass it skips
            main = next(iter(node.main_inputs.values()))
            window_fn = main.windowing.windowfn if hasattr(main, "windowing") else None
            args, kwargs = node.transform.raw_side_inputs
            self.bags[node] = bags[0].map(evaluators.get_windowed_value, window_fn).map_partitions(
                _run_bundle, node.transform, window_fn, side_inputs, list(args), kwargs)
            self.tagged.add(node)
            return
        op_class: Any = evaluators.TRANSLATIONS.get(node.transform.__class__, evaluators.NoOp)  # Create, GBK, Flatten
        op = op_class(node, bag_kwargs=self.bag_kwargs)
        single = len(bags) == 1 and not isinstance(op, evaluators.Flatten)
        self.bags[node] = op.apply(input_bag=bags[0] if single else (bags or None), side_inputs=side_inputs)

    def leaves(self) -> list[db.Bag]:
        return [bag for node, bag in self.bags.items() if node not in self.consumed and bag is not None]


class _SidePCollections(PipelineVisitor):
    """Every PCollection some transform reads as a side input."""

    def __init__(self) -> None:
        self.found: set[pvalue.PCollection] = set()

    def visit_transform(self, node: AppliedPTransform) -> None:
        self.found.update(si.pvalue for si in node.side_inputs)


class DaskRunner(beam_dask.DaskRunner):
    """Beam's DaskRunner (its `--dask_*` options) with the fixes in the module docstring."""

    def run_pipeline(self, pipeline, options):
        import dask.distributed

        dask_options = options.view_as(beam_dask.DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = beam_dask.DaskOptions._extract_bag_kwargs(dask_options)
        client = dask.distributed.Client(**dask_options)
        pipeline.replace_all(dask_overrides())
        sides = _SidePCollections()
        pipeline.visit(sides)
        translator = _Translator(client, bag_kwargs, sides.found)
        pipeline.visit(translator)
        futures = client.compute([leaf.map_partitions(_count) for leaf in translator.leaves()])
        return beam_dask.DaskRunnerResult(client, futures)
