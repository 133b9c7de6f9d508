#!/usr/bin/env python3
"""ViT Atlas command line from a checkout: `python build.py` is `vit-atlas` (builder/cli.py), and with
no arguments builds the offline demo atlas."""
import sys

from builder.cli import main, parser  # noqa: F401  (parser: for tests and tools that inspect the flags)

if __name__ == "__main__":
    sys.exit(main())
