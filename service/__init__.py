"""The HTTP service (Flask under gunicorn), the `imgclf` command dispatcher, prediction and annotation.

gunicorn runs ``"service:create_app()"``: every worker builds its own app and
loads its own models.
"""

from service.app import create_app

__all__ = ["create_app"]
