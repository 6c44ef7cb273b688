"""`python -m lucida`: the same as the `lucida` command."""

import sys

from lucida.tools.cli import main

sys.exit(main())
