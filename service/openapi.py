"""The OpenAPI 3 document of every route; `tests/service/test_openapi.py` keeps it true."""

from __future__ import annotations

from typing import Any

from service.auth import PUBLIC_ROUTES

ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    reasons = {
        400: "Malformed input: the message says what was expected",
        404: "No such model or version",
        405: "Method not allowed",
        413: "Body larger than the limit",
        415: "Unsupported Content-Type or Content-Encoding",
        503: "Model not loaded yet",
    }
    return {str(code): _json(ERROR, reasons[code]) for code in codes}


NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}


def _model_paths(prefix: str, params: list[dict]) -> dict[str, Any]:
    return {
        prefix: {
            "get": {
                "summary": "Model metadata (name, versions, platform, input and output tensors)",
                "operationId": f"modelMetadata{'Version' if len(params) > 1 else ''}",
                "parameters": params,
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/ModelMetadata"}, "Metadata"),
                    **_errors(404, 503),
                },
            }
        },
        f"{prefix}/ready": {
            "get": {
                "summary": "Model readiness",
                "operationId": f"modelReady{'Version' if len(params) > 1 else ''}",
                "parameters": params,
                "responses": {
                    "200": _json({"type": "object"}, "The model is ready"),
                    **_errors(404, 503),
                },
            }
        },
        f"{prefix}/infer": {
            "post": {
                "summary": "Inference (Open Inference Protocol), JSON or Triton binary tensors",
                "operationId": f"modelInfer{'Version' if len(params) > 1 else ''}",
                "parameters": [
                    *params,
                    {
                        "name": "Inference-Header-Content-Length",
                        "in": "header",
                        "required": False,
                        "description": "Length of the JSON header when binary tensors follow it",
                        "schema": {"type": "integer", "minimum": 1},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/InferenceRequest"}
                        },
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                    },
                },
                "responses": {
                    "200": {
                        "description": "Outputs; binary ones follow the JSON header",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/InferenceResponse"}
                            },
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                        },
                    },
                    **_errors(400, 404, 413, 415, 503),
                },
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    """The document, with bearer authentication on every route outside PUBLIC_ROUTES.

    The security scheme applies when the service has tokens (API_TOKENS); RFC 6750.
    """
    document = _routes_document()
    document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    unauthorized = _json(ERROR, "No valid bearer token (when the service requires one)")
    for path, operations in document["paths"].items():
        if path in PUBLIC_ROUTES:
            continue
        for operation in operations.values():
            operation["security"] = [{"bearer": []}]
            operation["responses"]["401"] = unauthorized
    return document


def _routes_document() -> dict[str, Any]:
    tensor_data = {
        "type": "array",
        "items": {"oneOf": [{"type": "number"}, {"type": "array"}]},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "onnx-ship inference service",
            "version": "0.1.0",
            "description": "Serves one ONNX model: the simple /predict contract and the "
            "Open Inference Protocol (KServe V2) with Triton's binary tensor extension.",
        },
        "paths": {
            "/predict": {
                "post": {
                    "summary": "Predict the class of one example or a batch",
                    "operationId": "predict",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/PredictRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/PredictResponse"}, "Classes"),
                        **_errors(400, 413, 415, 503),
                    },
                }
            },
            "/v2": {
                "get": {
                    "summary": "Server metadata",
                    "operationId": "serverMetadata",
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/ServerMetadata"}, "Metadata")
                    },
                }
            },
            "/v2/health/live": {
                "get": {
                    "summary": "Liveness: the process serves",
                    "operationId": "serverLive",
                    "responses": {"200": _json({"type": "object"}, "Live")},
                }
            },
            "/v2/health/ready": {
                "get": {
                    "summary": "Readiness: the model is loaded and warmed up",
                    "operationId": "serverReady",
                    "responses": {"200": _json({"type": "object"}, "Ready"), **_errors(503)},
                }
            },
            **_model_paths("/v2/models/{name}", [NAME]),
            **_model_paths("/v2/models/{name}/versions/{version}", [NAME, VERSION]),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3 document")},
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "PredictRequest": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {
                            "description": "One example (flat, e.g. 784 numbers, or nested in "
                            "the model's item shape, e.g. 28x28) or a list of examples",
                            "type": "array",
                            "minItems": 1,
                            "items": {"oneOf": [{"type": "number"}, {"type": "array"}]},
                        }
                    },
                },
                "PredictResponse": {
                    "type": "object",
                    "properties": {
                        "prediction": {"type": "integer"},
                        "predictions": {"type": "array", "items": {"type": "integer"}},
                        "model": {"type": "string"},
                        "version": {"type": "string"},
                    },
                },
                "ServerMetadata": {
                    "type": "object",
                    "required": ["name", "version", "extensions"],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "extensions": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "TensorMetadata": {
                    "type": "object",
                    "required": ["name", "datatype", "shape"],
                    "properties": {
                        "name": {"type": "string"},
                        "datatype": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                    },
                },
                "ModelMetadata": {
                    "type": "object",
                    "required": ["name", "platform", "inputs", "outputs"],
                    "properties": {
                        "name": {"type": "string"},
                        "versions": {"type": "array", "items": {"type": "string"}},
                        "platform": {"type": "string"},
                        "inputs": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/TensorMetadata"},
                        },
                        "outputs": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/TensorMetadata"},
                        },
                        "parameters": {"type": "object"},
                    },
                },
                "RequestInput": {
                    "type": "object",
                    "required": ["name", "shape", "datatype"],
                    "properties": {
                        "name": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                        "datatype": {"type": "string"},
                        "parameters": {"type": "object"},
                        "data": tensor_data,
                    },
                },
                "RequestOutput": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                },
                "InferenceRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/RequestInput"},
                        },
                        "outputs": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/RequestOutput"},
                        },
                    },
                },
                "ResponseOutput": {
                    "type": "object",
                    "required": ["name", "shape", "datatype"],
                    "properties": {
                        "name": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "datatype": {"type": "string"},
                        "parameters": {"type": "object"},
                        "data": tensor_data,
                    },
                },
                "InferenceResponse": {
                    "type": "object",
                    "required": ["model_name", "outputs"],
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "outputs": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/ResponseOutput"},
                        },
                    },
                },
            }
        },
    }
