"""`python -m aqueue`: the same as the `aqueue` command."""

import sys

from .cli import main

sys.exit(main())
