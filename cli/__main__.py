"""``python -m cli``: the ``halo`` command."""

import sys

from cli.main import main

sys.exit(main())
