"""imgclf: models."""
