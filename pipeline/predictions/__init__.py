"""Read captured predictions back: `store` (where the parts are, the records in them,
`logs`), `statistics` (counts, latency, drift) and `chart` (the report's PNG).

`python -m pipeline logs|report <env>` (`pipeline/cli.py`) puts them together.
"""
