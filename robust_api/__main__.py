"""``python -m robust_api``: the ``robust-api`` command line."""

import sys

from .commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
