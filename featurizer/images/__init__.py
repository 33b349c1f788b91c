"""Images: decoding and validation, labelled folders and sources, the demo set."""
