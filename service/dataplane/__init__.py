"""The data plane: one protocol-neutral call (model, version or label, typed inputs -> typed outputs)
where batching, pixel budgets, in-flight counting, metrics and readiness hang once."""
