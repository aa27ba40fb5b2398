"""`python -m gridctl ...`: the same as the `gridctl` console script (the demo starts its router this way)."""

from .cli import main

main()
