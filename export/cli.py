"""`dgsnet-predict` (the console script, and `python -m dgsnet_export.cli`): see dgsnet_export.runtime.cli."""
import sys

from .runtime.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
