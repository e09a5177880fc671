"""Settings are read once from the environment, with a clear error for each bad value."""

from __future__ import annotations

import re

import pytest

from service.config import ConfigError, Settings


def test_defaults_from_a_minimal_environment():
    settings = Settings.from_env({"MODEL_URL": "model.onnx"})
    assert settings.app_env == "local"
    assert settings.max_body_bytes == 4 * 1024 * 1024
    assert settings.intra_op_threads == 1
    assert settings.prediction_log_sample == 100


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "MODEL_URL is not set"),
        ({"MODEL_URL": "m", "APP_ENV": "Staging/1"}, "APP_ENV"),
        ({"MODEL_URL": "m", "MODEL_SHA256": "abc"}, "MODEL_SHA256"),
        ({"MODEL_URL": "m", "MAX_BODY_BYTES": "lots"}, "MAX_BODY_BYTES"),
        ({"MODEL_URL": "m", "PORT": "-1"}, "PORT"),
        ({"MODEL_URL": "m", "PREDICTION_LOG_SAMPLE": "150"}, "PREDICTION_LOG_SAMPLE"),
        ({"MODEL_URL": "m", "PREDICTION_LOG_INPUTS": "maybe"}, "PREDICTION_LOG_INPUTS"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MODEL_NAME": "team/mnist"}, "MODEL_NAME='team/mnist' is not a single URL path segment"),
        ({"MODEL_NAME": "mnist 8"}, "MODEL_NAME='mnist 8'"),
        ({"MODEL_NAME": "a%2Fb"}, "MODEL_NAME='a%2Fb'"),
        ({"MODEL_NAME": "what?"}, "MODEL_NAME='what?'"),
        ({"MODEL_NAME": ".."}, "MODEL_NAME='..'"),
        ({"MODEL_VERSION": "1/2"}, "MODEL_VERSION='1/2' is not a single URL path segment"),
        ({"MODEL_VERSION": "."}, "MODEL_VERSION='.'"),
        ({"MODEL_URL": "s3://bucket/my model.onnx"}, "from the model file's name; set MODEL_NAME"),
        ({"PORT": "70000"}, "PORT=70000 is not a TCP port"),
        ({"PORT": "0"}, "PORT=0 is not a TCP port"),
        ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY=0"),
        (
            {"INTRA_OP_THREADS": "100000"},
            "INTRA_OP_THREADS=100000 is more threads than any task has cores: use 1 to 64",
        ),
        ({"MAX_BODY_BYTES": "0"}, "MAX_BODY_BYTES"),
        ({"BATCH_MAX_DELAY_MS": "nan"}, "BATCH_MAX_DELAY_MS='nan' is not a finite number"),
        ({"BATCH_MAX_DELAY_MS": "inf"}, "BATCH_MAX_DELAY_MS='inf' is not a finite number"),
        ({"BATCH_MAX_DELAY_MS": "60000"}, "BATCH_MAX_DELAY_MS=60000 would hold every request"),
        ({"MODEL_BATCHED_SHA256": "a" * 64}, "MODEL_BATCHED_SHA256 is set without"),
        ({"BODY_TIMEOUT_SECONDS": "0"}, "BODY_TIMEOUT_SECONDS=0 leaves a request body no time"),
        ({"BODY_TIMEOUT_SECONDS": "1e-9"}, "BODY_TIMEOUT_SECONDS=1e-09 leaves"),
        ({"BODY_TIMEOUT_SECONDS": "0.5"}, "use at least 1; the default is 30"),
        ({"BODY_TIMEOUT_SECONDS": "-1"}, "BODY_TIMEOUT_SECONDS='-1' must not be negative"),
        ({"BODY_TIMEOUT_SECONDS": "inf"}, "BODY_TIMEOUT_SECONDS='inf' is not a finite number"),
        ({"MODEL_LABELS": "0,1,2"}, "MODEL_LABELS must be a JSON array"),
        ({"MODEL_LABELS": "[]"}, "MODEL_LABELS must be a JSON array of non-empty strings"),
        ({"MODEL_LABELS": '["a", 1]'}, "MODEL_LABELS must be a JSON array of non-empty strings"),
    ],
)
def test_settings_the_routes_cannot_serve_are_refused_naming_the_variable(env, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env({"MODEL_URL": "models/mnist-8.onnx", **env})


@pytest.mark.parametrize("name", ["mnist-8", "team_mnist.v2", "A~b", "x"])
def test_names_that_are_one_path_segment_are_served(name):
    settings = Settings.from_env({"MODEL_URL": "m.onnx", "MODEL_NAME": name, "MODEL_VERSION": name})
    assert settings.served_model_name == name


def test_the_default_name_is_the_model_file_stem():
    settings = Settings.from_env({"MODEL_URL": "s3://bucket/models/mnist-8.onnx?versionId=3"})
    assert settings.served_model_name == "mnist-8"


def test_labels_are_read_as_a_json_array():
    settings = Settings.from_env({"MODEL_URL": "m.onnx", "MODEL_LABELS": '["cat", "dog, big"]'})
    assert settings.model_labels == ("cat", "dog, big")


def test_labels_must_match_the_model_classes(settings):
    from service.loader import load_model

    nine = Settings(**{**settings.__dict__, "model_labels": tuple("012345678")})
    with pytest.raises(
        ConfigError, match="MODEL_LABELS has 9 labels but the model's first output"
    ) as raised:
        load_model(nine)
    assert str(raised.value).endswith("has 10 classes: give one label per class, in class order")


def test_a_body_limit_below_one_example_is_refused(settings):
    from service.loader import load_model

    tiny = Settings(**{**settings.__dict__, "max_body_bytes": 2000})
    with pytest.raises(ConfigError, match="MAX_BODY_BYTES=2000 is below one example"):
        load_model(tiny)
