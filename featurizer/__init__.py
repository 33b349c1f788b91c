"""Image decoding, the frozen Inception-v3 graph, the feature cache and `imgclf featurize`.

Knows nothing of training or HTTP. Heavy modules (TensorFlow) are imported by
the submodules that need them, never here.
"""
