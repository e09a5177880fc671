"""The alternative users would pick: `/predict` written with FastAPI and pydantic.

This is the obvious design (a pydantic `{data: list[float]}` body, a
blocking handler that FastAPI runs in its thread pool, `argmax` of the
scores), with onnxruntime set up as the service sets it up (one intra-op
thread), so the comparison measures the framework and not the thread count.

    MODEL_PATH=mnist-8.onnx uvicorn bench.fastapi_app:app
"""

from __future__ import annotations

import os

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

from bench.compute import session

model = session(
    os.environ["MODEL_PATH"], intra_op_threads=int(os.environ.get("INTRA_OP_THREADS", "1"))
)
input_name = model.get_inputs()[0].name
app = FastAPI()


class PredictRequest(BaseModel):
    data: list[float]


class PredictResponse(BaseModel):
    prediction: int


@app.get("/health")
def health() -> dict:
    return {"ready": True}


@app.post("/predict")
def predict(request: PredictRequest) -> PredictResponse:
    image = np.asarray(request.data, dtype=np.float32).reshape(1, 1, 28, 28)
    scores = model.run(None, {input_name: image})[0]
    return PredictResponse(prediction=int(scores.argmax()))
