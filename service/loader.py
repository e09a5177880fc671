"""Turn settings into a loaded, verified, warmed-up model (or a ModelLoadError)."""

from __future__ import annotations

from pathlib import Path

from service.artifacts import ArtifactError, fetch
from service.config import Settings
from service.errors import ModelLoadError
from service.model import ModelInfo, OnnxModel


def load_model(settings: Settings) -> OnnxModel:
    try:
        path, sha256 = fetch(
            settings.model_url, sha256=settings.model_sha256, cache_dir=settings.cache_dir
        )
    except ArtifactError as exc:
        raise ModelLoadError(f"model refused: {exc}") from exc
    info = ModelInfo(
        name=settings.model_name or _stem(settings.model_url),
        version=settings.model_version or sha256[:12],
        sha256=sha256,
    )
    batched_path = None
    if settings.model_batched_url:
        try:
            batched_path, _ = fetch(
                settings.model_batched_url,
                sha256=settings.model_batched_sha256,
                cache_dir=settings.cache_dir,
            )
        except ArtifactError as exc:
            raise ModelLoadError(f"batch-capable copy refused: {exc}") from exc
    model = OnnxModel(
        path, info, intra_op_threads=settings.intra_op_threads, batched_path=batched_path
    )
    try:
        model.warm_up()
    except Exception as exc:
        raise ModelLoadError(f"model refused: warm-up inference failed: {exc}") from exc
    return model


def _stem(url: str) -> str:
    name = Path(url.split("?", 1)[0].rstrip("/")).name
    return name.removesuffix(".onnx") or "model"
