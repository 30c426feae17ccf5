"""TF Serving warm-up records (issue 28): `<version>/assets.extra/tf_serving_warmup_requests`.

TF Serving replays these requests when it loads a version, before it reports the version
available, so the first real request does not pay for tracing and kernel selection. The file
is a TFRecord of `tensorflow.serving.PredictionLog` protos, each holding one `PredictRequest`
(model name, signature name, input tensors): see TF Serving's "SavedModel Warmup" guide.

The messages are declared here, field for field as in tensorflow_serving/apis
(prediction_log.proto: PredictionLog.predict_log = 6; PredictLog.request = 1; predict.proto:
PredictRequest.model_spec = 1, inputs = 2; model.proto: ModelSpec.name = 1, signature_name = 3),
in a private descriptor pool, because the `tensorflow-serving-api` package depends on the full
`tensorflow` package, which would install a second TensorFlow beside tensorflow-cpu. The
inputs are TensorFlow's own `TensorProto`s (`tf.make_tensor_proto`).
"""
import os

import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from tensorflow.core.framework import tensor_pb2

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
_PACKAGE = "tensorflow.serving"


def _add_with_dependencies(pool, file_descriptor, seen):
    for dep in file_descriptor.dependencies:
        _add_with_dependencies(pool, dep, seen)
    if file_descriptor.name not in seen:
        proto = descriptor_pb2.FileDescriptorProto()
        file_descriptor.CopyToProto(proto)
        pool.Add(proto)
        seen.add(file_descriptor.name)


def _messages():
    """(PredictionLog, PredictRequest) classes over a private pool."""
    pool = descriptor_pool.DescriptorPool()
    _add_with_dependencies(pool, tensor_pb2.DESCRIPTOR, set())
    f = descriptor_pb2.FileDescriptorProto(name="tfawd/serving_warmup.proto", package=_PACKAGE,
                                           syntax="proto3",
                                           dependency=[tensor_pb2.DESCRIPTOR.name])
    T = descriptor_pb2.FieldDescriptorProto

    def message(name, fields, nested=()):
        m = f.message_type.add(name=name)
        for field_name, number, kind, type_name, label in fields:
            m.field.add(name=field_name, number=number, type=kind, type_name=type_name,
                        label=label or T.LABEL_OPTIONAL)
        for n in nested:
            m.nested_type.add().CopyFrom(n)
        return m

    message("ModelSpec", [("name", 1, T.TYPE_STRING, None, None),
                          ("signature_name", 3, T.TYPE_STRING, None, None)])
    entry = descriptor_pb2.DescriptorProto(name="InputsEntry",
                                           options=descriptor_pb2.MessageOptions(map_entry=True))
    entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                    type_name=".tensorflow.TensorProto")
    message("PredictRequest", [
        ("model_spec", 1, T.TYPE_MESSAGE, f".{_PACKAGE}.ModelSpec", None),
        ("inputs", 2, T.TYPE_MESSAGE, f".{_PACKAGE}.PredictRequest.InputsEntry",
         T.LABEL_REPEATED)], nested=[entry])
    message("PredictLog", [("request", 1, T.TYPE_MESSAGE, f".{_PACKAGE}.PredictRequest", None)])
    message("PredictionLog", [("predict_log", 6, T.TYPE_MESSAGE, f".{_PACKAGE}.PredictLog",
                               None)])
    pool.Add(f)
    get = lambda name: message_factory.GetMessageClass(  # noqa: E731
        pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
    return get("PredictionLog"), get("PredictRequest")


PredictionLog, PredictRequest = _messages()


def request_record(model_name: str, signature: str, inputs: dict) -> bytes:
    """One serialized PredictionLog: `signature` of `model_name` called with `inputs`
    ({input name: array-like})."""
    log = PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        # the private pool's TensorProto: the same wire format, another class
        request.inputs[name].ParseFromString(tf.make_tensor_proto(value).SerializeToString())
    return log.SerializeToString()


def write_warmup(version_dir: str, model_name: str, requests) -> str:
    """Writes `requests` [(signature, {input: array})] as the warm-up file of a SavedModel
    version folder; returns its path."""
    path = os.path.join(version_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests:
            writer.write(request_record(model_name, signature, inputs))
    return path


def read_warmup(version_dir: str) -> list:
    """[(model name, signature, {input: numpy array})] of a version's warm-up file."""
    out = []
    for record in tf.data.TFRecordDataset(os.path.join(version_dir, WARMUP_FILE)):
        log = PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        out.append((request.model_spec.name, request.model_spec.signature_name,
                    {k: tf.make_ndarray(tensor_pb2.TensorProto.FromString(v.SerializeToString()))
                     for k, v in request.inputs.items()}))
    return out
