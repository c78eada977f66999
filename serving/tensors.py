"""TensorProto <-> numpy for the request path, with errors a client can act on.

Output conversion writes `tensor_content` directly: `tf.make_tensor_proto`
costs more than the model call at batch 1 on this machine.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

_DTYPE_NAMES = {v: k for k, v in types_pb2.DataType.items()}


def dtype_name(dtype: int) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype))


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decodes a request tensor; ValueError (with the reason) when it is malformed."""
    try:
        return tf.make_ndarray(proto)
    except (ValueError, TypeError, IndexError) as err:
        raise ValueError(f"malformed TensorProto: {err}") from err


def from_ndarray(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Encodes a response tensor (numeric via tensor_content, strings via string_val)."""
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in array.shape]
    )
    if array.dtype.kind in "OSU":
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape)
        proto.string_val.extend(
            v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)
        )
        return proto
    dtype = tf.as_dtype(array.dtype).as_datatype_enum
    return tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=shape, tensor_content=np.ascontiguousarray(array).tobytes()
    )
