"""`keel bench`: every stage of the data path measured against the raw limits of the same machine, same run.

Stages (one module each): `codec`, `produce`, `project`, `end_to_end`, `catch_up`, `fan_out`, `memory`;
`runner.py` runs them and `report.py` writes the JSON and the generated section of docs/performance.md.
The bench is part of the composition root: it wires the real services and may use the drivers directly
for its baselines (`raw_kafka.py`, the COPY baselines), which is the point of a baseline.
"""
