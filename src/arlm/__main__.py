"""``python -m arlm`` is the ``arlm`` command."""

import sys

from arlm.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
