"""`python -m simnet`: the same as the `simnet` command."""

from simnet.cli import main

main(prog_name="simnet")
