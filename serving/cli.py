"""`serving`: export a trained run for TF Serving, serve it over gRPC, predict raw rows.

    serving export  --run RUN --data DATA --model_base_path BASE --model_name NAME
    serving serve   --model_config_file BASE/models.config --port 8500 --rest_api_port 8501
    serving serve   --model_name NAME --model_base_path BASE/NAME --rest_api_port 8501
    serving predict --target localhost:8500 --model_name NAME --input FILE --format criteo
    serving push     --run RUN --blessing RUN/blessing.json --data DATA --model_base_path BASE --model_name NAME
    serving rollback --model_base_path BASE --model_name NAME [--to VERSION]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Sequence

from pipeline import quiet
from pipeline.atomic import write_text_atomic
from pipeline.errors import EXIT_USAGE, UsageError
from serving.limits import CALLER_THREAD_ROWS, DEFAULT_MAX_ROWS

EXIT_FAILED = 1


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"serving: error: {message}", file=sys.stderr)
    return code


def _add_export_target(p: argparse.ArgumentParser, run_help: str) -> None:
    """What `export` and `push` share: the run, its pipeline run and where the version goes."""
    p.add_argument("--run", required=True, help=run_help)
    p.add_argument("--data", required=True, help="the run's pipeline output dir (transform_fn/, stats.json)")
    p.add_argument("--model_base_path", required=True, help="TF Serving base dir BASE")
    p.add_argument("--model_name", required=True,
                   help="model name NAME (BASE/NAME/<version>): 1-128 letters, digits, '_', '-', "
                   "'.', starting with a letter or digit")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a verified SavedModel version + TF Serving configs",
        description="Export a trained run (trainer --stage=retrain|train) as BASE/NAME/<version>: "
        "a SavedModel on raw tf.Examples with the TFT graph inside, warmup records, and "
        "BASE/models.config, batching.config, monitoring.config. Verified before it is published.",
    )
    _add_export_target(p, run_help="trainer run dir (holds the trained model)")
    p.add_argument("--version", type=int, default=None, help="version number (default: next)")
    p.add_argument("--verify_input", default=None,
                   help="raw rows to verify on (default: rows drawn from the vocabularies)")
    p.add_argument("--format", dest="input_format", default=None,
                   help="format of --verify_input (default: the dataset of --data)")
    p.add_argument("--verify_rows", type=int, default=1000, help="rows to verify on")
    p.add_argument("--tolerance", type=float, default=1e-5, help="max abs probability diff")


def _bool(text: str) -> bool:
    """A boolean flag value as tensorflow_model_server's flag parser takes it."""
    value = {"true": True, "1": True, "false": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false. Received: {text!r}")
    return value


def _add_bool(p: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
    """--name, --name=true or --name=false, as TF Serving's boolean flags."""
    p.add_argument(f"--{name}", type=_bool, nargs="?", const=True, default=default,
                   metavar="true|false", help=f"{help} (default {str(default).lower()})")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the TF Serving-compatible server: gRPC, REST and metrics (development and CI)",
        description="A TF Serving-compatible server for machines without "
        "tensorflow_model_server; production uses TF Serving (see serving/docker-compose.yaml). "
        "Flags mirror tensorflow_model_server's. It listens only once every model has an "
        "AVAILABLE version, then prints 'serving'. By default it listens on all interfaces "
        "(0.0.0.0), as TF Serving does; pass --host 127.0.0.1 to serve this machine only. "
        "SIGTERM or Ctrl-C shut it down cleanly.",
    )
    p.add_argument("--model_config_file", default=None,
                   help="BASE/models.config: the models to serve (when set, --model_name and "
                   "--model_base_path are ignored, as TF Serving ignores them)")
    p.add_argument("--model_name", default="default",
                   help="with --model_base_path: the name to serve one model under, without a "
                   "config file (default 'default', as TF Serving)")
    p.add_argument("--model_base_path", default=None,
                   help="serve the one model whose numbered version dirs are here (BASE/NAME), "
                   "latest version, without a config file")
    p.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0,
                   help="re-read --model_config_file this often and serve its new model list "
                   "(0 = read once, as TF Serving)")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0 = pick a free one)")
    p.add_argument("--host", default="0.0.0.0",
                   help="interface for gRPC and REST: 0.0.0.0 = all interfaces (default, as TF "
                   "Serving), 127.0.0.1 = this machine only")
    p.add_argument("--rest_api_port", type=int, default=0,
                   help="HTTP port of the REST API (/v1/models/...) and the Prometheus metrics "
                   "(monitoring.config path); 0 = no HTTP")
    p.add_argument("--rest_api_num_threads", type=int, default=None,
                   help="REST worker threads = connections served at once (default 4 x CPUs)")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=30_000,
                   help="REST socket timeout: a connection idle this long is closed")
    p.add_argument("--grpc_max_threads", type=int, default=None,
                   help="gRPC worker threads (default 4 x CPUs)")
    p.add_argument("--grpc_channel_arguments", default="",
                   help="gRPC server arguments, e.g. grpc.max_receive_message_length=67108864 "
                   "(default message limit: 2 GiB - 1, as TF Serving)")
    _add_bool(p, "enable_batching", True,
              "batch concurrent requests as batching.config says (TF Serving's default is false)")
    _add_bool(p, "enable_model_warmup", True,
              "replay each version's assets.extra/tf_serving_warmup_requests at load, before "
              "it is AVAILABLE (TF Serving's flag)")
    _add_bool(p, "allow_version_labels_for_unavailable_models", False,
              "allow a config to assign a new version label to a version not loaded yet "
              "(TF Serving's flag; moving an existing label still needs the version AVAILABLE)")
    p.add_argument("--batching_parameters_file", default=None,
                   help="batching.config (default: BASE/batching.config when present)")
    p.add_argument("--monitoring_config_file", default=None,
                   help="monitoring.config (default: BASE/monitoring.config when present)")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                   help="how often version dirs are scanned")
    p.add_argument("--max_num_load_retries", type=int, default=5,
                   help="retries of a failed version load before giving up (0 = load once)")
    p.add_argument("--load_retry_interval_micros", type=int, default=60_000_000,
                   help="wait between load retries (default 1 minute, as TF Serving)")
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                   help="threads running independent ops of one request (TF Serving's flag): "
                   "0 = TF picks, -1 = every op of every batch in the request's own thread "
                   "(slower for large batches: --caller_thread_max_rows does it for small ones)")
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                   help="threads inside one op, e.g. a large matmul (TF Serving's flag): 0 = TF "
                   "picks (one per core); 1 served 512-row requests ~15%% faster on 2 cores")
    p.add_argument("--caller_thread_max_rows", type=int, default=CALLER_THREAD_ROWS,
                   help="batches of at most this many rows run every op in the request's own "
                   "thread, larger ones on the inter-op pool (lower batch-1 latency; not a TF "
                   "Serving flag); 0 = always the pool")
    p.add_argument("--max_rows_per_request", type=int, default=DEFAULT_MAX_ROWS,
                   help="larger Predict/Classify requests get RESOURCE_EXHAUSTED "
                   "(not a TF Serving flag; bounds one request's compute)")
    p.add_argument("--port_file", default=None,
                   help="once listening, write the gRPC port (and the REST port on a second "
                   "line) here (for --port 0)")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    from pipeline import batch_scoring  # light: the reader loads only when scoring

    p = sub.add_parser(
        "predict",
        help="score raw rows of a file over gRPC, one output line per input row",
        description="Read raw rows (the formats `pipeline` reads, labeled or not: the label column "
        "is detected and never needed), send them in batches to `serving_default` of a TF "
        "Serving (or `serving serve`) server, and write a header `line[<TAB>KEPT...]<TAB>"
        "probability[<TAB>reason]`, then exactly one line per input row in file order (line = "
        "its line number in --input). A bad row fails the run naming its line (exit 2, nothing "
        "written) unless --on_bad_row=nan|skip marks it. A summary (rows in / scored / bad) "
        "goes to stderr, with a warning when most rows are mostly out of vocabulary (not the "
        "training data). A file of which no row scores (the wrong --format) always exits 2.",
    )
    p.add_argument("--target", required=True, help="HOST:PORT of the gRPC server")
    p.add_argument("--model_name", required=True, help="model name NAME the server serves")
    p.add_argument("--input", required=True, help="raw rows file (plain or .gz)")
    p.add_argument("--format", default="criteo",
                   help="input format: a dataset name the pipeline knows (criteo, avazu, kdd12, ...)")
    p.add_argument("--schema", default=None,
                   help="schema file for schema-described input: the training run's schema (a file "
                   "without the label column reads with it too)")
    p.add_argument("--unlabeled", action="store_true", default=None, help=batch_scoring.UNLABELED_HELP)
    p.add_argument("--keep_columns", default=None, help=batch_scoring.KEEP_COLUMNS_HELP)
    p.add_argument("--on_bad_row", choices=batch_scoring.ON_BAD_ROW, default="error",
                   help=batch_scoring.ON_BAD_ROW_HELP)
    p.add_argument("--version", type=int, default=None, help="model version (default: latest)")
    p.add_argument("--batch_size", type=int, default=256, help="rows per PredictRequest")
    p.add_argument("--output", default=None,
                   help="write the lines here (comma-separated if it ends in .csv; default: stdout)")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline of each RPC, seconds")
    p.add_argument("--wait_ready", type=float, default=0.0,
                   help="first wait up to this many seconds for the model to be AVAILABLE")


def _add_push(sub: argparse._SubParsersAction) -> None:
    from serving.push import DEFAULT_KEEP

    p = sub.add_parser(
        "push",
        help="export a BLESSED run as the next version, keep the last --keep versions",
        description="Export a run as BASE/NAME/<next version> (the `export` step: built beside, verified "
        "under the session loader, renamed) only if --blessing is a BLESSED blessing.json naming --run "
        "(`trainer --stage=evaluate --candidate RUN ...`); otherwise exit 2 having written nothing. "
        "Then delete all but the newest --keep versions, never the highest one nor one that "
        "BASE/models.config names (version labels, a `specific` version policy).",
    )
    _add_export_target(p, run_help="the blessed trainer run dir")
    p.add_argument("--blessing", required=True, help="its blessing.json (trainer --stage=evaluate --candidate)")
    p.add_argument("--keep", type=int, default=DEFAULT_KEEP,
                   help=f"versions to keep after the push (default {DEFAULT_KEEP}, at least 1)")


def _add_rollback(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rollback",
        help="serve an older version again, as a new higher version (safe under a live server)",
        description="TF Serving (and `serving serve`) serve the highest version under the default "
        "version policy (latest, 1 version), and deleting a served version under a live server is "
        "unsafe. So rollback copies the older version (hard links where possible) into a NEW, higher "
        "version dir, built beside and renamed atomically; the servers switch on their next "
        "file-system poll (--file_system_poll_wait_seconds). BASE/NAME/ROLLBACK.json records each "
        "rollback. Alternative: pin a version in models.config with model_version_policy { specific "
        "{ versions: N } } and let the servers re-read it (--model_config_file_poll_wait_seconds).",
    )
    p.add_argument("--model_base_path", required=True, help="TF Serving base dir BASE")
    p.add_argument("--model_name", required=True, help="model name NAME (BASE/NAME/<version>)")
    p.add_argument("--to", type=int, default=None,
                   help="version to serve again (default: the newest older version that holds another "
                   "model than the served one and that no earlier rollback replaced)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_export(sub)
    _add_serve(sub)
    _add_predict(sub)
    _add_push(sub)
    _add_rollback(sub)
    for p in (parser, *sub.choices.values()):  # global, or after the subcommand
        quiet.add_verbose_flag(p)
    return parser


def run_export(args: argparse.Namespace) -> int:
    from serving import configs
    from serving.export import ExportError, export

    start = time.perf_counter()
    try:
        result = export(args.run, args.data, args.model_base_path, args.model_name,
                        version=args.version, verify_input=args.verify_input,
                        input_format=args.input_format, verify_rows=args.verify_rows,
                        tolerance=args.tolerance)
    except ExportError as err:
        return _fail(str(err), EXIT_FAILED)
    except UsageError as err:
        return _fail(f"cannot export {args.run} with {args.data}: {err}")
    v = result.verification
    print(f"exported {result.version_dir} (version {result.version}) in "
          f"{time.perf_counter() - start:.1f}s")
    print(f"  calibration: probabilities = {v.calibration.describe()} (the run's calibration.json)")
    print(f"  verified on {v.rows} rows ({v.source}), tolerance {v.tolerance:g}:")
    print(f"    session loader (TF Serving's path): serving_default vs Keras {v.max_abs_diff:.2e}, "
          f"raw_fields {v.fields_max_abs_diff:.2e}, classification {v.classify_max_abs_diff:.2e}, "
          f"oov_fraction vs TFT ids {v.oov_max_abs_diff:.2e}")
    print(f"    {v.mostly_oov_rows} of {v.rows} rows have most categorical fields out of vocabulary")
    print(f"    tf.saved_model.load: serving_default vs Keras {v.tf2_max_abs_diff:.2e}")
    print(f"  warmup records: {result.warmup_records}")
    print(f"  configs: {', '.join(str(p) for p in result.config_files)}")
    print("  production: " + configs.official_server_command(pathlib.Path(args.model_base_path)))
    return 0


def _serve_options(args: argparse.Namespace, metrics_path: str):
    """ServerOptions from the `serve` flags; a UsageError names the bad flag."""
    from serving.manager import LoadPolicy
    from serving.server import DEFAULT_THREADS, ServerOptions, parse_channel_arguments

    if args.caller_thread_max_rows < 0:
        raise UsageError(f"--caller_thread_max_rows must be >= 0. Received: {args.caller_thread_max_rows}")
    if args.tensorflow_intra_op_parallelism < 0 or args.tensorflow_inter_op_parallelism < -1:
        raise UsageError("--tensorflow_intra_op_parallelism must be >= 0 and "
                         "--tensorflow_inter_op_parallelism >= -1. Received: "
                         f"{args.tensorflow_intra_op_parallelism}, "
                         f"{args.tensorflow_inter_op_parallelism}")
    for flag in ("max_num_load_retries", "max_rows_per_request", "rest_api_timeout_in_ms"):
        if getattr(args, flag) < (1 if flag != "max_num_load_retries" else 0):
            raise UsageError(f"--{flag} must be positive. Received: {getattr(args, flag)}")
    return ServerOptions(
        host=args.host, port=args.port, rest_api_port=args.rest_api_port or None,
        metrics_path=metrics_path, poll_seconds=args.file_system_poll_wait_seconds,
        grpc_channel_arguments=parse_channel_arguments(args.grpc_channel_arguments),
        grpc_threads=args.grpc_max_threads or DEFAULT_THREADS,
        rest_threads=args.rest_api_num_threads or DEFAULT_THREADS,
        rest_timeout_s=args.rest_api_timeout_in_ms / 1000,
        load_policy=LoadPolicy(max_load_retries=args.max_num_load_retries,
                               retry_interval_s=args.load_retry_interval_micros / 1e6,
                               max_rows=args.max_rows_per_request,
                               inter_op_threads=args.tensorflow_inter_op_parallelism,
                               intra_op_threads=args.tensorflow_intra_op_parallelism,
                               caller_thread_rows=args.caller_thread_max_rows,
                               warmup=args.enable_model_warmup,
                               labels_for_unavailable=(
                                   args.allow_version_labels_for_unavailable_models)),
        model_config_file=args.model_config_file,
        config_poll_seconds=args.model_config_file_poll_wait_seconds,
    )


def _default_file(base: pathlib.Path | None, name: str) -> pathlib.Path | None:
    """BASE/name when serving BASE/models.config and it exists."""
    return base / name if base is not None and (base / name).exists() else None


def run_serve(args: argparse.Namespace) -> int:
    from serving import configs
    from serving.manager import ModelLoadError
    from serving.servable import ServingError
    from serving.server import ModelServer

    base = pathlib.Path(args.model_config_file).parent if args.model_config_file else None
    try:
        if args.model_config_file:
            model_config = configs.read_models_config(args.model_config_file)
        elif args.model_base_path:  # as tensorflow_model_server: one model, no config file
            model_config = configs.single_model_config(args.model_name, args.model_base_path)
        else:
            raise UsageError("nothing to serve: pass --model_config_file BASE/models.config, or "
                             "--model_base_path BASE/NAME (and --model_name NAME) for one model")
        batching_file = args.batching_parameters_file or _default_file(base,
                                                                       configs.BATCHING_CONFIG)
        batching = (configs.read_batching_config(batching_file) if batching_file
                    else configs.BatchingSettings())
        if not args.enable_batching:
            batching = configs.BatchingSettings(max_batch_size=batching.max_batch_size,
                                                batch_timeout_micros=0, num_batch_threads=4,
                                                max_enqueued_batches=batching.max_enqueued_batches)
        monitoring_file = args.monitoring_config_file or _default_file(base,
                                                                       configs.MONITORING_CONFIG)
        metrics_path = configs.PROMETHEUS_PATH
        if monitoring_file:
            monitoring = configs.read_monitoring_config(monitoring_file)
            metrics_path = monitoring.prometheus_config.path or metrics_path
        options = _serve_options(args, metrics_path)
        server = ModelServer(model_config, batching, options)
    except UsageError as err:  # ConfigFileError included
        return _fail(str(err))
    except ServingError as err:  # a version label on a version not loaded yet
        return _fail(f"cannot serve: {err.message}")
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        server.stop_loading()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    code = 0
    try:
        started = server.start()
    except ModelLoadError as err:
        started, code = False, _fail(f"cannot serve: {err}", EXIT_FAILED)
    except OSError as err:
        started, code = False, _fail(f"cannot listen on {args.host}: {err}", EXIT_FAILED)
    if started:
        if args.port_file:
            ports = [server.port] + ([server.rest_port] if server.rest_port else [])
            write_text_atomic(args.port_file, "".join(f"{p}\n" for p in ports))
        models = ", ".join(m.name for m in model_config.model_config_list.config)
        rest = (f", REST at http://{args.host}:{server.rest_port}/v1/models/NAME, metrics at "
                f":{server.rest_port}{metrics_path}" if server.rest_port else "")
        print(f"serving {models} on {args.host}, gRPC port {server.port}{rest} (batching: max "
              f"{batching.max_batch_size} rows, {batching.batch_timeout_micros} us)", flush=True)
        stop.wait()
    print("shutting down", flush=True)
    server.stop()
    print(f"stopped cleanly; {server.metrics.total()} requests served\n{server.metrics.summary()}",
          flush=True)
    # Everything is stopped and flushed. Skip interpreter teardown: with TFT graphs
    # loaded, TF's exit-time destructors can crash or hang (docs/DESIGN.md section 5),
    # which would turn a clean SIGTERM into a kill by the supervisor.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_predict(args: argparse.Namespace) -> int:
    import grpc
    from tqdm import tqdm

    from pipeline import batch_scoring, raw_rows
    from serving import examples
    from serving.client import ServingClient

    if not pathlib.Path(args.input).is_file():
        return _fail(f"--input {args.input} does not exist")
    try:
        spec = raw_rows.load_spec(dataset=None if args.schema else args.format,
                                  schema_path=args.schema)
    except UsageError as err:
        return _fail(f"--format {args.format!r} / --schema {args.schema!r}: {err}")
    start = time.perf_counter()
    with ServingClient(args.target, timeout=args.timeout) as client:
        def scorer(rows: list[dict[str, list]]):
            return client.predict_scores(args.model_name, examples.serialize_rows(rows), args.version)

        try:
            if args.wait_ready > 0:
                client.wait_until_available(args.model_name, args.wait_ready, args.version)
            with tqdm(unit="rows", desc="predict", file=sys.stderr, disable=None) as progress:
                summary = batch_scoring.score_file(
                    args.input, spec, scorer, args.output, batch_size=args.batch_size,
                    on_bad_row=args.on_bad_row, keep_columns=batch_scoring.parse_keep_columns(args.keep_columns),
                    unlabeled=args.unlabeled, progress=progress.update)
        except grpc.RpcError as err:
            return _fail(f"{args.target}: {err.code().name}: {err.details()}", EXIT_FAILED)
        except TimeoutError as err:
            return _fail(str(err), EXIT_FAILED)
        except UsageError as err:  # a bad row, the wrong format, a missing --keep_columns column
            return _fail(str(err))
    print(f"predicted via {args.target} in {time.perf_counter() - start:.2f}s: {summary.describe()}",
          file=sys.stderr)
    warning = summary.foreign_warning()
    if warning:
        print(warning, file=sys.stderr)
    return 0


def run_push(args: argparse.Namespace) -> int:
    from serving.export import ExportError
    from serving.push import push

    try:
        result = push(args.run, args.blessing, args.data, args.model_base_path, args.model_name, keep=args.keep)
    except ExportError as err:
        return _fail(str(err), EXIT_FAILED)
    except UsageError as err:
        return _fail(f"cannot push {args.run}: {err}")
    print(f"pushed {args.run} as {result.export.version_dir} (version {result.export.version}, verified on "
          f"{result.export.verification.rows} rows); {result.blessing}")
    kept = f"; kept pinned versions {list(result.protected)}" if result.protected else ""
    print(f"  removed old versions {list(result.removed) or 'none'} (--keep {args.keep}){kept}")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from serving.push import rollback

    try:
        result = rollback(args.model_base_path, args.model_name, args.to)
    except UsageError as err:
        return _fail(f"cannot roll back {args.model_name}: {err}")
    print(f"rolled back {args.model_name}: version {result.version} (a copy of version {result.source}) now "
          f"replaces {result.replaced} as the highest version; servers switch on their next poll; "
          f"history: {result.history}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet.configure(getattr(args, "verbose", False))
    handler = {"export": run_export, "serve": run_serve, "predict": run_predict, "push": run_push,
               "rollback": run_rollback}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
