"""`python -m lampctl` runs the command line."""

import sys

from lampctl.cli import main

sys.exit(main())
