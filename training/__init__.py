"""imgclf: training."""
