"""`python -m nnlab train ...`: the nnlab command (nnlab.cli)."""

import sys

from nnlab.cli import main

if __name__ == "__main__":  # not when a spawned worker imports the main module again
    sys.exit(main())
