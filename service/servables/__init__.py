"""The model kinds as the data plane sees them (image classifier, secondary models); no wire format."""
