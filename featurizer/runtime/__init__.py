"""What runs the graph: the Featurizer, its TensorFlow and OpenVINO backends, int8 calibration."""
