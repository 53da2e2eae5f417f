"""``moonpipe-gateway``'s command line: exposure warning, keys from the environment."""

from __future__ import annotations

from typing import Any

import pytest

from rest.conftest import post

pytestmark = pytest.mark.e2e


def test_binding_beyond_loopback_without_keys_warns(start_gateway: Any) -> None:
    gw = start_gateway("--host", "0.0.0.0")
    assert "without API keys" in gw.log_text()


def test_keys_from_the_environment(start_gateway: Any, image_uri: str) -> None:
    gw = start_gateway("--host", "0.0.0.0", env={"MOONPIPE_GATEWAY_API_KEYS": "alpha, beta"})
    assert "without API keys" not in gw.log_text()
    body = {"image_url": image_uri, "settings": {"max_tokens": 1}}
    assert post(f"{gw.endpoint}/caption", body)[0] == 401
    assert post(f"{gw.endpoint}/caption", body, {"X-Moondream-Auth": "beta"})[0] == 200
    assert post(f"{gw.endpoint}/caption", body, {"Authorization": "Bearer alpha"})[0] == 200
