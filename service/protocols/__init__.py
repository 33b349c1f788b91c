"""The wire protocols over the data plane: each translates its format to and from it, nothing more."""
