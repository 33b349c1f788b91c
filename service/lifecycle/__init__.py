"""Which model versions a worker serves: plan, version policy, states, labels, polling."""
