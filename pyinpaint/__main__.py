import sys

from pyinpaint.cli import main

sys.exit(main())
