"""The OpenAPI 3 document of every route; `tests/service/test_openapi.py` keeps it true."""

from __future__ import annotations

from typing import Any

from service import __version__
from service.auth import PUBLIC_ROUTES
from service.codec import MAX_REQUEST_ID_CHARS

ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    reasons = {
        400: "Malformed input, or a key, parameter or query parameter this server does not "
        "implement: the message names it and says what was expected",
        404: "No such model or version",
        405: "Method not allowed",
        408: "The body did not arrive in full within the server's body timeout; the "
        "connection is closed",
        413: "Body larger than the limit",
        415: "Unsupported Content-Type or Content-Encoding",
        503: "Model not loaded yet",
    }
    return {str(code): _json(ERROR, reasons[code]) for code in codes}


NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}

PREDICT_DESCRIPTION = (
    "The shape of `data` alone decides the answer, never the number of examples it holds. "
    "One example is flat (784 numbers for mnist-8) or shaped like the model's item without "
    "its size-1 dimensions (28x28) and answers `prediction`. A list of examples adds one "
    "leading dimension to either form, or to the full item shape (Nx1x28x28), and answers "
    "`predictions`, also when it holds a single example. The class is the argmax of the "
    "model's first output; an example the model scores as NaN has none, and is a 400 "
    "naming it."
)
INFER_DESCRIPTION = (
    "Parameters this server implements: `binary_data_output` (request), "
    "`binary_data_size` (input) and `binary_data` (output) from Triton's binary tensor "
    "extension; `classification` (output) from Triton's classification extension: the "
    "output comes back as BYTES [batch, min(k, classes)] of `<score>:<index>:<label>` "
    "strings (`<score>:<index>` without labels), highest score first. Any other parameter "
    "or key is refused with 400 naming it. An absent or empty `outputs` list answers every "
    "output. Request bodies may be gzip (every member) or deflate (zlib or raw) coded."
)
NO_QUERY = "No route takes query parameters: one is refused with 400 naming it."


def _model_paths(prefix: str, params: list[dict]) -> dict[str, Any]:
    return {
        prefix: {
            "get": {
                "summary": "Model metadata (name, versions, platform, input and output tensors)",
                "description": "Shapes read from the graph; -1 is a dimension of any size. "
                "Where batches are served (always, for a model whose batch dimension is 1 "
                "or dynamic) the first dimension is -1.",
                "operationId": f"modelMetadata{'Version' if len(params) > 1 else ''}",
                "parameters": params,
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/ModelMetadata"}, "Metadata"),
                    **_errors(400, 404, 503),
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
                    **_errors(400, 404, 503),
                },
            }
        },
        f"{prefix}/infer": {
            "post": {
                "summary": "Inference (Open Inference Protocol), JSON or Triton binary tensors",
                "description": INFER_DESCRIPTION,
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
                    **_errors(400, 404, 408, 413, 415, 503),
                },
            }
        },
    }


def _parameters(**implemented: dict) -> dict:
    """A `parameters` object holding only the parameters this server implements."""
    return {"type": "object", "additionalProperties": False, "properties": implemented}


def openapi_document() -> dict[str, Any]:
    """The document, with bearer authentication on every route outside PUBLIC_ROUTES.

    The security scheme applies when the service has tokens (API_TOKENS); RFC 6750.
    """
    document = _routes_document()
    document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    unauthorized = _json(ERROR, "No valid bearer token (when the service requires one)")
    for path, operations in document["paths"].items():
        if path not in PUBLIC_ROUTES:
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
                operation["responses"]["401"] = unauthorized
        _add_head_and_options(operations)
    return document


def _add_head_and_options(operations: dict[str, Any]) -> None:
    """HEAD beside GET and OPTIONS on every route, as service.resources answers them: HEAD
    is GET's answers without content (RFC 9110 section 9.3.2), OPTIONS a 204 whose Allow
    lists the route's methods (section 9.3.7)."""
    first = next(iter(operations.values()))
    common = {key: first[key] for key in ("security",) if key in first}
    path_parameters = [p for p in first.get("parameters", []) if p["in"] == "path"]
    if path_parameters:
        common["parameters"] = path_parameters
    if "get" in operations:
        get = operations["get"]
        operations["head"] = {
            "summary": f"{get['summary']}: GET's status and headers without its content",
            "operationId": f"{get['operationId']}Head",
            **common,
            "responses": {
                code: {"description": response["description"]}
                for code, response in get["responses"].items()
            },
        }
    responses: dict[str, Any] = {
        "204": {
            "description": "No content; Allow lists the methods this route takes",
            "headers": {"Allow": {"schema": {"type": "string"}}},
        }
    }
    if "401" in first["responses"]:
        responses["401"] = first["responses"]["401"]
    operations["options"] = {
        "summary": "The methods this route takes (Allow)",
        "operationId": f"{first['operationId']}Options",
        **common,
        "responses": responses,
    }


def _routes_document() -> dict[str, Any]:
    tensor_data = {
        "type": "array",
        "items": {"oneOf": [{"type": "number"}, {"type": "array"}]},
    }
    output_data = {
        "type": "array",
        "items": {"oneOf": [{"type": "number"}, {"type": "string"}, {"type": "array"}]},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "onnx-ship inference service",
            "version": __version__,
            "description": "Serves one ONNX model: the simple /predict contract and the "
            "Open Inference Protocol (KServe V2) with Triton's binary tensor and "
            "classification extensions. " + NO_QUERY,
        },
        "paths": {
            "/predict": {
                "post": {
                    "summary": "Predict the class of one example or a batch",
                    "description": PREDICT_DESCRIPTION,
                    "operationId": "predict",
                    "parameters": [
                        {
                            "name": "X-Request-Id",
                            "in": "header",
                            "required": False,
                            "description": "The request's id in its captured records "
                            "(else a generated UUID)",
                            "schema": {"type": "string", "maxLength": MAX_REQUEST_ID_CHARS},
                        }
                    ],
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
                        **_errors(400, 408, 413, 415, 503),
                    },
                }
            },
            "/v2": {
                "get": {
                    "summary": "Server metadata",
                    "operationId": "serverMetadata",
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/ServerMetadata"}, "Metadata"),
                        **_errors(400),
                    },
                }
            },
            "/v2/health/live": {
                "get": {
                    "summary": "Liveness: the process serves",
                    "operationId": "serverLive",
                    "responses": {"200": _json({"type": "object"}, "Live"), **_errors(400)},
                }
            },
            "/v2/health/ready": {
                "get": {
                    "summary": "Readiness: the model is loaded and warmed up",
                    "operationId": "serverReady",
                    "responses": {"200": _json({"type": "object"}, "Ready"), **_errors(400, 503)},
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
                        },
                        **_errors(400),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {
                        "200": _json({"type": "object"}, "OpenAPI 3 document"),
                        **_errors(400),
                    },
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
                    "additionalProperties": False,
                    "properties": {
                        "data": {
                            "description": "One example (flat, e.g. 784 numbers, or shaped "
                            "like the item without its size-1 dimensions, e.g. 28x28) or a "
                            "list of examples, which answers a list even with one element",
                            "type": "array",
                            "minItems": 1,
                            "items": {"oneOf": [{"type": "number"}, {"type": "array"}]},
                        }
                    },
                },
                "PredictResponse": {
                    "description": "`prediction` when `data` is one example, `predictions` "
                    "(one per example, in order) when it is a list of examples",
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["prediction", "model", "version"],
                            "additionalProperties": False,
                            "properties": {
                                "prediction": {"type": "integer"},
                                "model": {"type": "string"},
                                "version": {"type": "string"},
                            },
                        },
                        {
                            "type": "object",
                            "required": ["predictions", "model", "version"],
                            "additionalProperties": False,
                            "properties": {
                                "predictions": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {"type": "integer"},
                                },
                                "model": {"type": "string"},
                                "version": {"type": "string"},
                            },
                        },
                    ],
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
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                        "datatype": {"type": "string"},
                        "parameters": _parameters(
                            binary_data_size={
                                "type": "integer",
                                "minimum": 0,
                                "description": "Bytes of this input in the binary tail",
                            }
                        ),
                        "data": tensor_data,
                    },
                },
                "RequestOutput": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "parameters": _parameters(
                            binary_data={
                                "type": "boolean",
                                "description": "Answer this output as binary tensor data",
                            },
                            classification={
                                "type": "integer",
                                "minimum": 0,
                                "description": "Answer the top k classes as BYTES "
                                "<score>:<index>[:<label>] instead of the scores (0: scores)",
                            },
                        ),
                    },
                },
                "InferenceRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "additionalProperties": False,
                    "properties": {
                        "id": {"type": "string", "maxLength": MAX_REQUEST_ID_CHARS},
                        "parameters": _parameters(
                            binary_data_output={
                                "type": "boolean",
                                "description": "Default of every output's binary_data",
                            }
                        ),
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
                        "data": output_data,
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
