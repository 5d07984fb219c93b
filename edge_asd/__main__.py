"""`python -m edge_asd` is the same as the `edge-asd` command."""

import sys

from edge_asd.cli import main

sys.exit(main())
