"""The gateway's pure parts: image fields, segment path mapping, error mapping, config."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from moonpipe_client import (
    Box,
    Cancelled,
    ConnectionFailed,
    InvalidRequest,
    RequestTimeout,
    ServerError,
    ServerUnavailable,
)
from moonpipe_gateway.config import GatewayConfig, is_loopback
from moonpipe_gateway.errors import ApiError, from_moonpipe
from moonpipe_gateway.images import decode_image_url, sniff_format
from moonpipe_gateway.middleware import normalise_path
from moonpipe_gateway.segment import PathDeltaScaler, box_relative_path

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32


def uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def refusal(value: str, max_bytes: int = 1 << 20) -> ApiError:
    with pytest.raises(ApiError) as info:
        decode_image_url(value, "image_url", max_bytes)
    assert info.value.param == "image_url" and info.value.message.startswith("image_url: ")
    return info.value


def test_data_uris_and_bare_base64_decode_whatever_their_label() -> None:
    assert decode_image_url(uri(PNG), "image_url", 1 << 20) == PNG
    assert decode_image_url(uri(PNG, "image/jpeg"), "image_url", 1 << 20) == PNG  # the label is not trusted
    assert decode_image_url(base64.b64encode(JPEG).decode(), "image_url", 1 << 20) == JPEG
    wrapped = base64.encodebytes(JPEG).decode()  # with newlines, unpadded variants
    assert decode_image_url("data:image/jpeg;base64," + wrapped, "image_url", 1 << 20) == JPEG
    assert decode_image_url(base64.urlsafe_b64encode(PNG).decode().rstrip("="), "image_url", 1 << 20) == PNG


def test_bad_image_fields_are_400_or_413() -> None:
    assert "data URI" in refusal("http://10.0.0.1/secret.png").message
    assert refusal("HTTPS://example.com/a.jpg").status == 400
    assert refusal("ftp://example.com/a.jpg").status == 400
    assert refusal("data:image/png,").status == 400
    assert refusal("data:image/png;base64,%%%").status == 400
    assert "not valid base64" in refusal(uri(PNG) + "====").message
    assert "not valid base64" in refusal("data:image/png;base64,iVBORw0KGgo\u00e9AAAA").message
    assert "not an image" in refusal(uri(b"GIF90a not quite")).message
    assert refusal(uri(PNG), max_bytes=10).status == 413
    assert refusal(" ").status == 400


@given(st.binary(max_size=300), st.sampled_from(["plain", "wrapped", "spaced", "urlsafe", "unpadded"]))
def test_every_base64_spelling_decodes_to_the_same_bytes(tail: bytes, spelling: str) -> None:
    """Plain padded base64 takes the quick path, the other spellings the tolerant one;
    both give the image's bytes."""
    data = PNG + tail
    text = {
        "plain": base64.b64encode(data).decode(),
        "wrapped": base64.encodebytes(data).decode(),
        "spaced": " ".join(base64.b64encode(data).decode()[i:i + 7] for i in range(0, 4 * len(data), 7)),
        "urlsafe": base64.urlsafe_b64encode(data).decode(),
        "unpadded": base64.b64encode(data).decode().rstrip("="),
    }[spelling]
    assert decode_image_url(f"data:image/png;base64,{text}", "image_url", 1 << 20) == data
    assert decode_image_url(text, "image_url", 1 << 20) == data


@pytest.mark.parametrize(("data", "kind"), [
    (JPEG, "jpeg"), (PNG, "png"), (b"GIF89a...", "gif"), (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
    (b"BM\x00\x00", "bmp"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"%PDF-1.7", None), (b"", None),
])
def test_sniff_format(data: bytes, kind: str | None) -> None:
    assert sniff_format(data) == kind


def test_box_relative_path_inverts_the_engine_mapping() -> None:
    box = Box(0.2, 0.4, 0.6, 0.9)
    assert box_relative_path("M 0.2000,0.4000 L 0.6000,0.9000 L 0.4000,0.6500 Z", box) == "M 0,0 L 1,1 L 0.5,0.5 Z"
    assert box_relative_path("M 0.5000,0.5000", Box(0.5, 0.1, 0.5, 0.9)) == "M 0,0.5"  # zero width


@given(st.lists(st.sampled_from(["M", "L", "m", "c", " ", ",", "Z", "12", "960", "-4", "0.5", "3"]), max_size=40),
       st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_path_deltas_rescale_the_same_however_the_text_is_split(tokens: list[str], cuts: list[int]) -> None:
    text = " ".join(tokens)
    whole = PathDeltaScaler()
    expected = whole.feed(text) + whole.flush()
    scaler = PathDeltaScaler()
    pieces, start = [], 0
    for cut in sorted(c for c in cuts if c <= len(text)):
        pieces.append(scaler.feed(text[start:cut]))
        start = cut
    pieces.append(scaler.feed(text[start:]) + scaler.flush())
    assert "".join(pieces) == expected


def test_path_deltas_are_viewbox_units_over_960() -> None:
    scaler = PathDeltaScaler()
    out = [scaler.feed(d) for d in ("M 48", "0 96", "0 L 9", "60,0 Z")] + [scaler.flush()]
    assert "".join(out) == "M 0.5 1 L 1,0 Z"
    assert out[0] == "M " and out[1] == "0.5 "  # "48" may continue: held back


@pytest.mark.parametrize(("error", "status", "param"), [
    (InvalidRequest("IMAGE: cannot identify image format"), 400, "image_url"),
    (InvalidRequest("IMAGE: 9000x9000 = 81000000 pixels exceeds the limit of 40000000"), 413, "image_url"),
    (InvalidRequest("PROMPT: the query skill needs a non-empty question"), 400, "question"),
    (InvalidRequest("something without an input name"), 400, None),
    (ServerUnavailable("120 requests in flight; retry later"), 503, None),
    (ConnectionFailed("cannot reach the moonpipe server"), 502, None),
    (RequestTimeout("no complete answer"), 504, None),
    (Cancelled("cancelled"), 503, None),
    (ServerError("boom"), 500, None),
])
def test_engine_errors_map_to_statuses(error: Exception, status: int, param: str | None) -> None:
    assert isinstance(error, (InvalidRequest, ServerUnavailable, RequestTimeout, Cancelled, ServerError))
    mapped = from_moonpipe(error, {"IMAGE": "image_url", "PROMPT": "question"}, "127.0.0.1:8001")
    assert (mapped.status, mapped.param) == (status, param)
    assert mapped.body()["error"]["message"] == mapped.message
    if param:
        assert mapped.message.startswith(f"{param}: ")
    if status in (502, 503):
        assert "Retry-After" in mapped.headers


def test_config_validation_and_exposure() -> None:
    with pytest.raises(ValueError, match="triton_url"):
        GatewayConfig(triton_url="nohost")
    with pytest.raises(ValueError, match="api_keys"):
        GatewayConfig(api_keys=frozenset({" "}))
    with pytest.raises(ValueError, match="max_body_bytes"):
        GatewayConfig(max_body_bytes=10)
    assert not GatewayConfig().exposed_without_keys
    assert GatewayConfig(host="0.0.0.0").exposed_without_keys
    assert not GatewayConfig(host="0.0.0.0", api_keys=frozenset({"k"})).exposed_without_keys
    assert GatewayConfig(model_ids=("moondream2", "moondream")).served_models == ("moondream", "moondream2")
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("example.com")


@pytest.mark.parametrize(("path", "want"), [
    ("/v1//caption", "/v1/caption"), ("/v1/caption/", "/v1/caption"), ("//v1///query//", "/v1/query"), ("/", "/"),
])
def test_paths_are_normalised(path: str, want: str) -> None:
    assert normalise_path(path) == want
