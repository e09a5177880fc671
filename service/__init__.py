"""ONNX inference service: a Falcon ASGI app that serves one ONNX model."""
