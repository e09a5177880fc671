"""Pipeline logic driven by the noxfile: fetch, gate, build, push, release, terraform.

`python -m pipeline --help` lists the commands (`pipeline/cli.py`).
"""

from pathlib import Path

# The checkout this package runs from: model.toml, the Dockerfile and terraform/ are here.
REPO = Path(__file__).resolve().parent.parent
