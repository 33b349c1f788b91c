"""TF Serving's gRPC API over the data plane: PredictionService (Predict, Classify, GetModelMetadata) and
ModelService (GetModelStatus).

The same models, signatures and messages as the TF Serving REST routes:
``model_spec`` picks the model, its version (0 or none: the default) or label,
and the signature; a picture is an element of a DT_STRING tensor (its
encoded bytes, no base64); numbers come in the dtype the signature states.
What each model takes and answers is its servable's, so a new output (the
unfamiliar-input flag) flows through without a line here.
"""

from __future__ import annotations

import numpy as np

from imgclf.core import export_names as names
from imgclf.core.errors import BadRequest
from imgclf.core.model_kind import ModelKind
from imgclf.service.dataplane.plane import DataPlane, InferenceRequest
from imgclf.service.protocols.grpc.messages import message
from imgclf.service.protocols.grpc.tensor_proto import DT_STRING, data_type, make_tensor, shape_of, type_name, values_of
from imgclf.service.protocols.tfserving.codec import METHOD_NAME
from imgclf.service.servables.base import Servable, Signature, TensorSpec

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
SIGNATURE_DEF_FIELD = "signature_def"  # the metadata field TF Serving knows
PICTURE_FEATURES = (names.IMAGE_BYTES_KEY, "image/encoded")  # where Classify looks for a tf.Example's picture


def _spec(spec) -> tuple[str, int | None, str | None]:
    """Return (name, version, label) of a ModelSpec; version 0 or none means the default version."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label":
        return spec.name, None, spec.version_label
    return spec.name, (int(spec.version.value) or None) if choice == "version" else None, None


def _answer_spec(reply_spec, served: Servable, signature: str = "") -> None:
    reply_spec.name = served.name
    reply_spec.version.value = served.version
    reply_spec.signature_name = signature


class TFServing:
    """The handlers of PredictionService and ModelService for one worker's data plane."""

    def __init__(self, plane: DataPlane):
        self.plane = plane

    def handlers(self) -> dict[str, dict]:
        """Return {service: {method: handler(request, context)}}."""
        return {PREDICTION_SERVICE: {"Predict": self.predict, "Classify": self.classify,
                                     "GetModelMetadata": self.get_model_metadata},
                MODEL_SERVICE: {"GetModelStatus": self.get_model_status}}

    # --- Predict ----------------------------------------------------------------------------------------------

    def predict(self, request, context):
        """Predict one tensor of instances (pictures as DT_STRING, or numbers) through the signature asked."""
        name, version, label = _spec(request.model_spec)
        with self.plane.model(name, version, label) as served:
            signature = served.signature(request.model_spec.signature_name or None)
            key = signature.input.name
            if set(request.inputs) != {key}:
                raise BadRequest(f'"inputs" must name the one input {key!r}; received {sorted(request.inputs)}')
            instances, where = self._instances(request.inputs[key], signature.input)
            wanted = list(request.output_filter) or None
            outputs = self.plane.infer(served, InferenceRequest(instances, signature.name, wanted, where)).outputs
            reply = message("tensorflow.serving.PredictResponse")()
            _answer_spec(reply.model_spec, served, signature.name)
            for output, values in outputs.items():
                reply.outputs[output].CopyFrom(make_tensor(values))
            return reply

    def _instances(self, tensor, spec: TensorSpec) -> tuple[list, str]:
        """Return the data plane's instances of an input tensor, checked against ``spec`` before its values are read.

        Raises:
            BadRequest: a wrong dtype or shape, or more instances than a request may hold.
        """
        where = f"input {spec.name!r}"
        shape = shape_of(tensor)
        expected = data_type(spec.dtype)
        if tensor.dtype != expected:
            raise BadRequest(f"{where} must be of dtype {type_name(expected)}; received {type_name(tensor.dtype)}")
        per_entry = np.prod(spec.shape[1:], dtype=np.int64) if all(s >= 0 for s in spec.shape[1:]) else -1
        if not shape or shape[0] < 1 or (per_entry >= 0 and int(np.prod(shape[1:], dtype=np.int64)) != per_entry):
            raise BadRequest(f"{where} takes shape {list(spec.shape)} (-1: any size, the first is the batch); "
                             f"received shape {shape}")
        self.plane.check_count(shape[0], where)  # before a single value is read
        values = values_of(tensor, where)
        if tensor.dtype == DT_STRING:
            return values, where
        return [row.tolist() for row in values], where

    # --- Classify ---------------------------------------------------------------------------------------------

    def classify(self, request, context):
        """Classify the pictures of a list of tf.Examples: every label with its score, best first."""
        name, version, label = _spec(request.model_spec)
        with self.plane.model(name, version, label) as served:
            if served.kind is not ModelKind.IMAGE_CLASSIFIER:
                raise BadRequest(f"model {served.name!r} is a {served.kind.value}, not an image classifier: "
                                 f"call Predict")
            examples = self._examples(request.input)
            self.plane.check_count(len(examples), '"examples"')
            pictures = [_picture(example, index) for index, example in enumerate(examples)]
            signature = served.signature(request.model_spec.signature_name or None)
            if not signature.takes_pictures:
                raise BadRequest(f"signature {signature.name!r} of model {served.name!r} does not take pictures")
            inference = InferenceRequest(pictures, signature.name, [names.PROBABILITIES_KEY], '"examples"')
            probabilities = self.plane.infer(served, inference).outputs[names.PROBABILITIES_KEY]
            reply = message("tensorflow.serving.ClassificationResponse")()
            _answer_spec(reply.model_spec, served, signature.name)
            for row in probabilities:
                classes = reply.result.classifications.add().classes
                for index in np.argsort(-row, kind="stable"):
                    classes.add(label=served.labels[index], score=float(row[index]))
            return reply

    @staticmethod
    def _examples(given) -> list:
        kind = given.WhichOneof("kind")
        if kind is None:
            raise BadRequest('"input" holds no example_list: send one tf.Example per picture')
        return list(getattr(given, kind).examples)

    # --- metadata and status ----------------------------------------------------------------------------------

    def get_model_metadata(self, request, context):
        """Answer the model's signature defs (metadata field "signature_def"), as TF Serving does."""
        fields = list(request.metadata_field)
        unknown = sorted(set(fields) - {SIGNATURE_DEF_FIELD})
        if unknown or not fields:
            raise BadRequest(f'metadata_field must list "{SIGNATURE_DEF_FIELD}"; received {fields}')
        name, version, label = _spec(request.model_spec)
        with self.plane.model(name, version, label) as served:
            reply = message("tensorflow.serving.GetModelMetadataResponse")()
            _answer_spec(reply.model_spec, served)
            defs = message("tensorflow.serving.SignatureDefMap")()
            for key, signature in served.signatures().items():
                defs.signature_def[key].CopyFrom(_signature_def(signature))
            reply.metadata[SIGNATURE_DEF_FIELD].Pack(defs)
            return reply

    def get_model_status(self, request, context):
        """Answer every version of the model with its state, or the one asked (a label: the version it names)."""
        models = self.plane.models
        name, version, label = _spec(request.model_spec)
        if label is not None:
            version = models.label_version(name, label)
        reply = message("tensorflow.serving.GetModelStatusResponse")()
        states = reply.DESCRIPTOR.fields_by_name["model_version_status"].message_type.enum_types_by_name["State"]
        codes = message("tensorflow.serving.StatusProto").DESCRIPTOR.fields_by_name["error_code"].enum_type
        for status in models.status(name, version):
            entry = reply.model_version_status.add(version=int(status["version"]),
                                                   state=states.values_by_name[status["state"]].number)
            code = codes.values_by_name.get(status["status"]["error_code"])
            entry.status.error_code = code.number if code is not None else codes.values_by_name["UNKNOWN"].number
            entry.status.error_message = status["status"]["error_message"]
        return reply


def _picture(example, index: int) -> bytes:
    """Return the picture of one tf.Example: the bytes feature image_bytes or image/encoded, or its only one."""
    features = example.features.feature
    keys = [key for key in PICTURE_FEATURES if key in features] or [
        key for key, value in features.items() if value.WhichOneof("kind") == "bytes_list"]
    if len(keys) != 1 or features[keys[0]].WhichOneof("kind") != "bytes_list" \
            or len(features[keys[0]].bytes_list.value) != 1:
        raise BadRequest(f"example {index} must hold one picture: a bytes feature {PICTURE_FEATURES[0]!r} or "
                         f"{PICTURE_FEATURES[1]!r} with one value; received features {sorted(features)}")
    return bytes(features[keys[0]].bytes_list.value[0])


def _signature_def(signature: Signature):
    """Return one signature as TensorFlow's SignatureDef (dtypes, -1 for any size)."""
    found = message("tensorflow.SignatureDef")(method_name=METHOD_NAME)
    for target, specs in ((found.inputs, (signature.input,)), (found.outputs, signature.outputs)):
        for spec in specs:
            info = target[spec.name]
            info.name = spec.name
            info.dtype = data_type(spec.dtype)
            for size in spec.shape:
                info.tensor_shape.dim.add(size=size)
    return found
