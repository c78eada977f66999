"""`python -m pipeline` = the `pipeline` console script."""

from pipeline.cli import main

main()
