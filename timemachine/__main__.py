"""``python -m timemachine`` runs the command line."""

import sys

from timemachine.cli import main

if __name__ == "__main__":
    sys.exit(main())
