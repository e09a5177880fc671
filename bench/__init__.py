"""The benchmark harness: the service against its ceilings and its alternative.

`python -m bench` (or `nox -s bench`) measures, in one run and on one core
each for server and load generator: raw onnxruntime (the compute ceiling), a
bare ASGI app (the HTTP ceiling), `/predict` in FastAPI + pydantic (the
alternative) and the service's routes with prediction capture off and on.
"""
