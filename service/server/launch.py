"""The command line that runs gunicorn with imgclf's config and app, in this interpreter.

`imgclf serve` execs it (``IMGCLF_FRONT=0``) and the front starts it behind itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The config file by path, and -P: neither Python nor the config import may resolve `imgclf` through
# the working folder, where a user's own imgclf.py (or models.py, service.py) may lie.
CONF = str(Path(__file__).with_name("gunicorn_conf.py"))
APP = "imgclf.service:create_app()"


def gunicorn_argv() -> list[str]:
    """Return the command line that runs gunicorn with this package's settings, in this interpreter."""
    return [sys.executable, "-P", "-m", "gunicorn", "-c", CONF, APP]
