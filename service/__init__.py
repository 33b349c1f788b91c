"""imgclf: service."""
