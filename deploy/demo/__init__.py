"""`keel demo`: a fleet of offline-first devices through outages and a live schema migration, with proof.

`plan.py` (the seeded script), `workload.py` (what users edit), `edits.py` (writes per version),
`fleet.py` (SDK devices), `services.py` (the projector and gateway processes), `toxiproxy.py` and
`incidents.py` (the faults), `timeline.py` and `progress.py` (live counters), `proof.py` and `report.py`
(the verdict and the figures), `svg.py` and `html_report.py` (the HTML report), `runner.py` (the run),
`cli.py` (the command). The checker lives in `deploy/verification/` (docs/demo.md).
"""
