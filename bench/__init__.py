"""Benchmarks, run from the repository root as modules: ``python -m bench.featurize`` (and serve, soak).

Each compares against its baseline in the same run and prints ratios; none asserts.
They import the tests' helpers as the package ``tests.support``.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any bench module imports TensorFlow
