"""What every imgclf package shares: errors, settings, atomic writes, downloads, the command
runner, the TensorFlow runtime, the op allow-list and the model repository."""
