"""The upload page: GET / and its static files."""
