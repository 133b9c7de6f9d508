"""`python -m builder`: the ViT Atlas command line (builder.cli)."""
import sys

from builder.cli import main

sys.exit(main())
