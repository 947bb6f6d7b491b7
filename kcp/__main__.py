"""Entry point of ``python -m kcp``."""

import sys

from kcp.cli import main

sys.exit(main())
