"""gunicorn: its configuration, the worker-state files its master and workers share."""
