"""`python -m kdbench` runs the command line."""

import sys

from kdbench.cli import main

sys.exit(main())
