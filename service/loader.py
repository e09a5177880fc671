"""Turn settings into a loaded, verified, warmed-up model (or a ModelLoadError)."""

from __future__ import annotations

from service.artifacts import ArtifactError, fetch
from service.config import ConfigError, Settings
from service.errors import ModelLoadError
from service.model import ModelInfo, OnnxModel

# Room for the JSON header that travels with one example's binary tensor data.
HEADER_ALLOWANCE_BYTES = 1024


def load_model(settings: Settings) -> OnnxModel:
    """Fetch, verify, open and warm up the model the settings name.

    Raises ModelLoadError when the model cannot serve, ConfigError when a setting
    cannot work with this model (its labels, or a body limit below one example).
    """
    try:
        path, sha256 = fetch(
            settings.model_url, sha256=settings.model_sha256, cache_dir=settings.cache_dir
        )
    except ArtifactError as exc:
        raise ModelLoadError(f"model refused: {exc}") from exc
    info = ModelInfo(
        name=settings.served_model_name,
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
        path,
        info,
        intra_op_threads=settings.intra_op_threads,
        batched_path=batched_path,
        labels=settings.model_labels or (),
    )
    check_against_model(settings, model)
    try:
        model.warm_up()
    except Exception as exc:
        raise ModelLoadError(f"model refused: warm-up inference failed: {exc}") from exc
    return model


def check_against_model(settings: Settings, model: OnnxModel) -> None:
    """Settings that only the model can check: ConfigError naming the variable."""
    classes = model.classes
    if settings.model_labels is not None and len(settings.model_labels) != classes:
        raise ConfigError(
            f"MODEL_LABELS has {len(settings.model_labels)} labels but the model's first output "
            f"{model.outputs[0].name!r} has {classes} classes: give one label per class, in "
            "class order"
        )
    spec = model.input
    smallest = spec.item_size * spec.dtype.itemsize + HEADER_ALLOWANCE_BYTES
    if settings.max_body_bytes < smallest:
        raise ConfigError(
            f"MAX_BODY_BYTES={settings.max_body_bytes} is below one example of this model "
            f"({spec.item_size * spec.dtype.itemsize} bytes of {spec.datatype} as binary tensor "
            f"data plus {HEADER_ALLOWANCE_BYTES} for its JSON header): use at least {smallest}"
        )
