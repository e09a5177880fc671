"""ONNX inference service: a Falcon ASGI app that serves one ONNX model."""

from importlib.metadata import PackageNotFoundError, version

try:
    # The one version string: pyproject.toml's, as installed (the image installs the project).
    __version__ = version("onnx-ship")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
