"""`python -m zlab.cli …`, the same as the `zlab` command."""

import sys

from zlab.cli import main

sys.exit(main())
