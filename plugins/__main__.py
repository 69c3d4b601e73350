"""``python -m shitu.plugins COMMAND``: the ``shitu plugins`` command without the main CLI."""
import sys

from .cli import main

sys.exit(main())
