import sys

from dgsnet.cli import main

sys.exit(main())
