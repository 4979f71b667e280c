"""Allow `python -m meshd`."""

from meshd.cli import main

main()
