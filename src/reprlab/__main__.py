"""``python -m reprlab ...`` = the ``reprlab`` command."""

import sys

from reprlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
