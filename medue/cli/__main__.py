"""``python -m medue.cli``: the ``medue`` command (``torchrun ... -m medue.cli fit`` uses it)."""

import sys

from medue.cli import main

sys.exit(main())
