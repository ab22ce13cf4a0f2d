"""`python -m app.cli`: the same program as the `htl` script."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
