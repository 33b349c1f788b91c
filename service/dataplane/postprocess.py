"""Postprocessing shared by every way of predicting: probabilities → sorted top-k labels."""

from __future__ import annotations


def top_k(probabilities, labels: list[str], k: int) -> list[dict]:
    """Return the ``k`` best ``{"label", "score"}`` of one probability vector, best first."""
    order = sorted(range(len(labels)), key=lambda i: (-float(probabilities[i]), i))[:k]
    return [{"label": labels[i], "score": float(probabilities[i])} for i in order]
