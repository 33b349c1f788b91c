"""`python -m models ARGS`: the same as `imgclf models ARGS`."""

import sys

from models.cli import main

sys.exit(main())
