"""gRPC beside REST (``--grpc-bind``): TF Serving's PredictionService and ModelService, the Open Inference
Protocol's GRPCInferenceService and grpc.health.v1, over the same data plane."""
