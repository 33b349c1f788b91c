"""TensorFlow Serving's REST API: predict, status, metadata, the model list."""
