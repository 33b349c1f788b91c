"""The frozen graph: its contract, loading, old-op rewrites, folding, pruning, inspection, fetch, export."""
