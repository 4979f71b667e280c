"""simnet: many real meshd nodes on one machine, with faults, workloads and reports."""

__all__: list[str] = []
