"""Settings are read once from the environment, with a clear error for each bad value."""

from __future__ import annotations

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
