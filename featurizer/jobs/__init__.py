"""`imgclf featurize`: the local batch pipeline and the Ray engine."""
