"""The gRPC messages and services, from imgclf's own ``.proto`` files, in a descriptor pool of their own.

The ``.proto`` files in ``protos/`` state TF Serving's and the Open Inference
Protocol's messages with their published names and numbers (the unit tests
check them against the tensorflow-serving-api and tritonclient descriptors).
``protoc`` (grpcio-tools, a test and development dependency) compiles them
once into ``protos/descriptors.binpb``, which is committed and shipped: run
``python -m imgclf.service.protocols.grpc.messages`` after changing a file (a
test fails while the two differ). At run time the file goes into a private
:class:`~google.protobuf.descriptor_pool.DescriptorPool`, not the default
one: a process that also imports ``tensorflow_serving.apis`` or
``tritonclient.grpc`` (the tests do) would otherwise hold two definitions of
``tensorflow.serving.PredictRequest`` and fail. No generated Python code, so
no protobuf gencode/runtime version pins either.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTOS = Path(__file__).with_name("protos")
DESCRIPTORS = PROTOS / "descriptors.binpb"
PROTO_FILES = ("error_codes.proto", "tensorflow.proto", "tensorflow_serving.proto", "inference.proto")


def compile_descriptors() -> bytes:
    """Return the FileDescriptorSet of ``protos/`` (imports included), compiled by grpcio-tools' protoc.

    protoc runs in a process of its own: in one that has loaded TensorFlow (whose own protobuf library is linked
    in) it crashes.
    """
    from importlib import resources

    well_known = str(resources.files("grpc_tools") / "_proto")  # google/protobuf/any.proto, wrappers.proto
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "descriptors.binpb"
        done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"-I{well_known}",
                               "--include_imports", f"--descriptor_set_out={out}", *PROTO_FILES],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"protoc failed on {PROTOS} (exit status {done.returncode}): {done.stderr[-2000:]}")
        return _canonical(out.read_bytes())


def _canonical(data: bytes) -> bytes:
    """Return a FileDescriptorSet without source info, serialized deterministically (stable across runs)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(data)
    for item in files.file:
        item.ClearField("source_code_info")
    return files.SerializeToString(deterministic=True)


@functools.cache
def pool() -> descriptor_pool.DescriptorPool:
    """Return the private descriptor pool holding imgclf's gRPC messages and services."""
    found = descriptor_pool.DescriptorPool()
    for item in descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes()).file:
        found.Add(item)
    return found


@functools.cache
def message(full_name: str) -> type:
    """Return the message class of ``full_name`` (``tensorflow.serving.PredictRequest``)."""
    return message_factory.GetMessageClass(pool().FindMessageTypeByName(full_name))


def service(full_name: str):
    """Return the ServiceDescriptor of ``full_name`` (``inference.GRPCInferenceService``)."""
    return pool().FindServiceByName(full_name)


if __name__ == "__main__":  # regenerate protos/descriptors.binpb
    DESCRIPTORS.write_bytes(compile_descriptors())
    print(f"wrote {DESCRIPTORS} ({DESCRIPTORS.stat().st_size} bytes)", file=sys.stderr)
