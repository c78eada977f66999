"""Config files (text protos), the batcher, and the `serving serve` process lifecycle."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving import cli, configs
from serving import client as client_lib
from serving.batching import Batcher, QueueFullError
from serving.client import ServingClient
from serving.protos import BatchingParameters, MonitoringConfig
from serving.server import free_port
from tests import server_process
from tests.serving import tiny


def test_config_files_round_trip_through_their_protos(tmp_path):
    settings = configs.BatchingSettings(max_batch_size=64, batch_timeout_micros=500,
                                        num_batch_threads=3, max_enqueued_batches=7)
    configs.write_batching_config(tmp_path, settings)
    configs.write_monitoring_config(tmp_path)
    configs.update_models_config(tmp_path, "a")
    configs.update_models_config(tmp_path, "b")
    configs.update_models_config(tmp_path, "a")  # idempotent, keeps b
    assert configs.read_batching_config(tmp_path / "batching.config") == settings
    raw = configs.read_text_proto(tmp_path / "batching.config", BatchingParameters())
    assert raw.max_batch_size.value == 64 and raw.batch_timeout_micros.value == 500
    monitoring = configs.read_text_proto(tmp_path / "monitoring.config", MonitoringConfig())
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"
    models = configs.read_models_config(tmp_path / "models.config")
    assert [m.name for m in models.model_config_list.config] == ["a", "b"]
    assert models.model_config_list.config[0].model_version_policy.latest.num_versions == 1
    command = configs.official_server_command(tmp_path, 9000, 9001)
    for part in ("--port=9000", "--rest_api_port=9001", f"{tmp_path}/models.config",
                 f"{tmp_path}/batching.config", f"{tmp_path}/monitoring.config"):
        assert part in command
    on_socket = configs.official_server_command(tmp_path, rest_port=0, grpc_socket_path="/s/grpc.sock")
    assert "--port=0 --grpc_socket_path=/s/grpc.sock --rest_api_port=0" in on_socket


def test_unset_batching_fields_keep_defaults_and_bad_values_are_rejected(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 32 }\n")
    assert configs.read_batching_config(path) == configs.BatchingSettings(max_batch_size=32)
    path.write_text("max_batch_size { value: 0 }\n")
    with pytest.raises(configs.ConfigFileError, match="max_batch_size must be >= 1"):
        configs.read_batching_config(path)
    path.write_text("max_batch_size: 32\n")
    with pytest.raises(configs.ConfigFileError, match="batching.config is not a valid"):
        configs.read_batching_config(path)


def test_relative_base_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "models.config").write_text(
        'model_config_list { config { name: "m" base_path: "m" model_platform: "tensorflow" } }')
    config = configs.read_models_config(tmp_path / "models.config")
    assert isinstance(config, model_server_config_pb2.ModelServerConfig)
    assert config.model_config_list.config[0].base_path == str(tmp_path / "m")


@pytest.mark.parametrize("name", ["", "../up", "a/b", ".hidden", 'q"uote', "new\nline", "x" * 129,
                                  "sp ace"])
def test_bad_model_names_are_rejected_in_configs_and_exports(tmp_path, name):
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=name, base_path="m")
    (tmp_path / "models.config").write_text(text_format.MessageToString(config))
    with pytest.raises(configs.ConfigFileError, match="model name|needs a name"):
        configs.read_models_config(tmp_path / "models.config")
    with pytest.raises(configs.ConfigFileError, match="model name"):
        configs.update_models_config(tmp_path, name or "-")
    assert configs.check_model_name("ctr_v2.1-a", "x") == "ctr_v2.1-a"


def test_duplicate_model_names_are_rejected(tmp_path):
    (tmp_path / "models.config").write_text(
        'model_config_list { config { name: "m" base_path: "a" } config { name: "m" base_path: "b" } }')
    with pytest.raises(configs.ConfigFileError, match="listed twice"):
        configs.read_models_config(tmp_path / "models.config")


def test_serve_flags_follow_tf_serving(capsys):
    from serving import limits
    from serving.server import MAX_MESSAGE_BYTES, ServerOptions, parse_channel_arguments

    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--max_num_load_retries", "--load_retry_interval_micros", "--rest_api_port",
                 "--model_config_file_poll_wait_seconds", "--grpc_channel_arguments",
                 "--max_rows_per_request", "--tensorflow_inter_op_parallelism",
                 "--tensorflow_intra_op_parallelism", "--caller_thread_max_rows"):
        assert flag in text
    assert "0.0.0.0 = all interfaces" in text and "127.0.0.1 = this machine only" in text
    args = cli.build_parser().parse_args(["serve", "--model_config_file", "m"])
    assert (args.max_num_load_retries, args.load_retry_interval_micros) == (5, 60_000_000)
    assert args.host == "0.0.0.0" and ServerOptions().max_message_bytes == MAX_MESSAGE_BYTES
    assert args.max_rows_per_request == limits.DEFAULT_MAX_ROWS
    assert args.caller_thread_max_rows == limits.CALLER_THREAD_ROWS
    assert parse_channel_arguments("grpc.max_receive_message_length=1024, grpc.x=abc") == (
        ("grpc.max_receive_message_length", 1024), ("grpc.x", "abc"))
    with pytest.raises(ValueError, match="not key=value"):
        parse_channel_arguments("grpc.max_receive_message_length")


class _Recorder:
    """A fake model call: records batch sizes; a row of 999 blocks until `release` is set."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.release = threading.Event()

    def __call__(self, inputs):
        self.sizes.append(len(inputs["x"]))
        if any(v < 0 for v in inputs["x"]):
            raise ValueError("negative row")
        if 999 in inputs["x"]:
            self.release.wait(timeout=60)
        return {"y": inputs["x"] * 2}


def _send_all(batcher: Batcher, values) -> tuple[list[threading.Thread], dict]:
    results: dict = {}

    def send(i):
        results[i] = batcher.run({"x": np.array([i])}, 1)["y"][0]

    threads = [threading.Thread(target=send, args=(i,)) for i in values]
    for t in threads:
        t.start()
    return threads, results


def _wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the batcher"
        time.sleep(0.01)


def _blocked_batcher(num_batch_threads: int) -> tuple[_Recorder, Batcher, list[threading.Thread]]:
    """A batcher (8 rows, 60 s timeout) whose first call, inline, blocks until `release`."""
    recorder = _Recorder()
    settings = configs.BatchingSettings(max_batch_size=8, batch_timeout_micros=60_000_000,
                                        num_batch_threads=num_batch_threads, max_enqueued_batches=2)
    batcher = Batcher(recorder, settings, "t")
    blocker, _ = _send_all(batcher, [999])
    _wait_until(lambda: bool(recorder.sizes))
    return recorder, batcher, blocker


def test_requests_queued_behind_a_running_batch_share_one_call():
    recorder, batcher, blocker = _blocked_batcher(2)  # one slot busy: the others must batch up
    threads, results = _send_all(batcher, range(8))
    for t in threads:
        t.join(timeout=30)
    recorder.release.set()
    blocker[0].join(timeout=30)
    batcher.stop()
    assert recorder.sizes == [1, 8]  # the full batch closed long before the 60 s timeout
    assert results == {i: 2 * i for i in range(8)}


def test_requests_queued_behind_an_inline_call_run_when_it_ends():
    # One batch slot, taken by an inline call: the worker is woken by the call's end (and only
    # then), not by a timer, and runs what queued meanwhile as one batch.
    recorder, batcher, blocker = _blocked_batcher(1)
    threads, results = _send_all(batcher, range(3))
    _wait_until(lambda: batcher._queued_rows == 3)  # all three queued behind the inline call
    assert recorder.sizes == [1]
    recorder.release.set()
    for t in [*blocker, *threads]:
        t.join(timeout=30)
    batcher.stop()
    assert results == {i: 2 * i for i in range(3)} and recorder.sizes == [1, 3]


def test_a_lone_request_does_not_wait_for_the_batch_timeout():
    recorder = _Recorder()
    settings = configs.BatchingSettings(max_batch_size=8, batch_timeout_micros=600_000_000,
                                        num_batch_threads=1, max_enqueued_batches=2)
    batcher = Batcher(recorder, settings, "t")
    threads, results = _send_all(batcher, [3])
    threads[0].join(timeout=60)  # far below the 600 s batch timeout
    batcher.stop()
    assert results == {3: 6} and recorder.sizes == [1]


def test_an_idle_batcher_runs_a_request_in_its_thread_and_bounds_concurrent_batches():
    callers, active, peak, lock = [], [0], [0], threading.Lock()

    def run(inputs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        callers.append(threading.current_thread())
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        return {"y": inputs["x"] * 2}

    settings = configs.BatchingSettings(max_batch_size=1, batch_timeout_micros=0,
                                        num_batch_threads=2, max_enqueued_batches=64)
    batcher = Batcher(run, settings, "t")
    assert batcher.run({"x": np.array([4])}, 1)["y"][0] == 8
    assert callers == [threading.current_thread()]  # no hand-off to a worker when idle
    threads, results = _send_all(batcher, range(16))
    for t in threads:
        t.join(timeout=30)
    batcher.stop()
    assert results == {i: 2 * i for i in range(16)}
    assert len(callers) == 17 and peak[0] == 2  # inline calls count toward num_batch_threads


def test_large_requests_split_bad_ones_fail_alone_and_capacity_is_enforced():
    recorder = _Recorder()
    settings = configs.BatchingSettings(max_batch_size=8, batch_timeout_micros=0,
                                        num_batch_threads=1, max_enqueued_batches=3)
    batcher = Batcher(recorder, settings, "t")
    out = batcher.run({"x": np.arange(20)}, 20)
    assert recorder.sizes == [8, 8, 4]
    np.testing.assert_array_equal(out["y"], np.arange(20) * 2)
    with pytest.raises(ValueError, match="negative row"):
        batcher.run({"x": np.array([-1])}, 1)
    with pytest.raises(QueueFullError, match="queue capacity of 24 rows"):
        batcher.run({"x": np.arange(25)}, 25)
    batcher.stop()


def test_serve_rejects_a_bad_config_with_exit_2(tmp_path, capsys):
    (tmp_path / "models.config").write_text("model_config_list { nonsense }")
    assert cli.main(["serve", "--model_config_file", str(tmp_path / "models.config")]) == 2
    assert "models.config is not a valid ModelServerConfig" in capsys.readouterr().err


def test_serve_process_shuts_down_cleanly_on_sigterm(tiny_base, tmp_path):
    with server_process.serving(tiny_base / "models.config", tmp_path, ["tiny", "tiny_versions"],
                                "--rest_api_port", str(free_port())) as server:
        assert "version 1 AVAILABLE" in server.log_text()  # loaded before it listens
        with ServingClient(server.target, timeout=30) as client:
            assert client.status("tiny")[1] == client_lib.AVAILABLE
            assert client.predict_examples("tiny", tiny.SERIALIZED).shape == (4,)
        assert server.stop() == 0, server.describe()
    output = server.log_text()
    assert output.index("version 1 AVAILABLE") < output.index("serving tiny, tiny_versions on")
    assert f"REST at http://127.0.0.1:{server.rest_port}/v1/models/NAME" in output
    assert "stopped cleanly" in output and "tiny: 1 requests, 0 errors" in output
