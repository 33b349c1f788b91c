"""POST /predict: one picture in, the top-k labels (and the annotated picture) out."""
