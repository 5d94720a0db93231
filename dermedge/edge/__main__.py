"""`python -m dermedge.edge` is `edge-classify`."""

from dermedge.edge.cli import main

main(prog_name="edge-classify")
