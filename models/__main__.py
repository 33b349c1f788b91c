"""`python -m imgclf.models ARGS`: the same as `imgclf models ARGS`."""

import sys

from imgclf.models.cli import main

sys.exit(main())
