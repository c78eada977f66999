"""Proto classes for the TF Serving config files the pip package does not ship.

`tensorflow-serving-api` ships `model_server_config.proto` but not
`BatchingParameters` (session_bundle_config.proto) nor `MonitoringConfig`
(monitoring_config.proto). Both are rebuilt here from descriptors with the
upstream package names and field numbers, so that `batching.config` and
`monitoring.config` are parsed and written exactly as tensorflow_model_server
reads them (text format), without protoc.
"""

from __future__ import annotations

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    wrappers_pb2,  # noqa: F401  (registers wrappers.proto in the pool)
)

_F = descriptor_pb2.FieldDescriptorProto


def _field(
    name: str, number: int, kind: int, type_name: str = "", repeated: bool = False
) -> descriptor_pb2.FieldDescriptorProto:
    label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    field = _F(name=name, number=number, type=kind, label=label)
    if type_name:
        field.type_name = type_name
    return field


def _build() -> tuple[type, type]:
    pool = descriptor_pool.Default()
    monitoring = descriptor_pb2.FileDescriptorProto(
        name="optfusion/tensorflow_serving/config/monitoring_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
    )
    monitoring.message_type.add(
        name="PrometheusConfig",
        field=[
            _field("enable", 1, _F.TYPE_BOOL),
            _field("path", 2, _F.TYPE_STRING),
        ],
    )
    monitoring.message_type.add(
        name="MonitoringConfig",
        field=[
            _field(
                "prometheus_config", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig"
            )
        ],
    )
    batching = descriptor_pb2.FileDescriptorProto(
        name="optfusion/tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    int64 = ".google.protobuf.Int64Value"
    batching.message_type.add(
        name="BatchingParameters",
        field=[
            _field("max_batch_size", 1, _F.TYPE_MESSAGE, int64),
            _field("batch_timeout_micros", 2, _F.TYPE_MESSAGE, int64),
            _field("thread_pool_name", 3, _F.TYPE_MESSAGE, ".google.protobuf.StringValue"),
            _field("num_batch_threads", 4, _F.TYPE_MESSAGE, int64),
            _field("max_enqueued_batches", 5, _F.TYPE_MESSAGE, int64),
            _field("allowed_batch_sizes", 6, _F.TYPE_INT64, repeated=True),
            _field("pad_variable_length_inputs", 7, _F.TYPE_BOOL),
        ],
    )
    classes = []
    for file_proto, message in ((monitoring, "MonitoringConfig"), (batching, "BatchingParameters")):
        try:
            pool.FindFileByName(file_proto.name)
        except KeyError:
            pool.AddSerializedFile(file_proto.SerializeToString())
        descriptor = pool.FindMessageTypeByName(f"tensorflow.serving.{message}")
        classes.append(message_factory.GetMessageClass(descriptor))
    return classes[0], classes[1]


MonitoringConfig, BatchingParameters = _build()
