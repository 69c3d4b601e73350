import sys

from shitu.serving.cli import main

sys.exit(main())
