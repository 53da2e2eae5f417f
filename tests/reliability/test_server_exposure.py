"""What the server shows and allows a client that holds no key (issue 20, items 4 and 5).

Triton's admin APIs (model repository, shared memory, trace, logging) need the header
``moonpipe-admin-key`` (gRPC metadata ``triton-grpc-protocol-moonpipe-admin-key``);
inference, health, metadata, model configuration and statistics stay open. The model's
configuration names its checkpoint instead of showing a file-system path.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from moonpipe.triton_limits import ADMIN_KEY_HEADER
from reliability.conftest import Target
from reliability.support import CHANNEL_OPTIONS, MODEL, base_inputs, png, run_raw

pytestmark = pytest.mark.reliability

GRPC_KEY_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"


def _http(target: Target, method: str, path: str, body: object = None, key: str | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(target.http_url + path, data=data, method=method)
    if key is not None:
        request.add_header(ADMIN_KEY_HEADER, key)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


ADMIN_HTTP = [
    ("GET", "/v2/logging", None),
    ("POST", "/v2/logging", {"log_verbose_level": 0}),  # a no-op change
    ("POST", "/v2/repository/index", {}),
    ("GET", "/v2/systemsharedmemory/status", None),
    ("GET", "/v2/trace/setting", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_HTTP, ids=[f"{m} {p}" for m, p, _ in ADMIN_HTTP])
def test_admin_http_apis_refuse_a_client_without_the_key(target: Target, method: str, path: str,
                                                         body: object) -> None:
    status, text = _http(target, method, path, body)
    assert status == 403, (status, text)
    assert "restricted" in text and ADMIN_KEY_HEADER in text
    assert _http(target, method, path, body, key="not-the-key")[0] == 403
    status, text = _http(target, method, path, body, key=target.server.admin_key)
    assert status == 200, (status, text)


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/v2", f"/v2/models/{MODEL}",
                                  f"/v2/models/{MODEL}/ready", f"/v2/models/{MODEL}/config",
                                  f"/v2/models/{MODEL}/stats"])
def test_health_metadata_config_and_statistics_stay_open(target: Target, path: str) -> None:
    status, text = _http(target, "GET", path)
    assert status == 200, (status, text)


def test_admin_grpc_calls_need_the_key_and_the_rest_stays_open(target: Target) -> None:
    with grpc.insecure_channel(target.grpc_url, options=CHANNEL_OPTIONS) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        key = [(GRPC_KEY_HEADER, target.server.admin_key)]
        for call, request in ((stub.LogSettings, service_pb2.LogSettingsRequest()),
                              (stub.RepositoryIndex, service_pb2.RepositoryIndexRequest()),
                              (stub.SystemSharedMemoryStatus, service_pb2.SystemSharedMemoryStatusRequest())):
            with pytest.raises(grpc.RpcError) as refused:
                call(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert GRPC_KEY_HEADER in str(refused.value.details())
            call(request, timeout=10, metadata=key)  # accepted with the key
        assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready
        assert stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=MODEL), timeout=10).name == MODEL
        assert stub.ModelConfig(service_pb2.ModelConfigRequest(name=MODEL), timeout=10).config.name == MODEL


def test_inference_needs_no_key(target: Target) -> None:
    outcome = run_raw(target.grpc_url, base_inputs("caption", png(64, 48), max_tokens=2))
    assert outcome.error is None and outcome.final, outcome.error


def test_the_model_config_names_its_checkpoint_without_a_path(target: Target) -> None:
    status, text = _http(target, "GET", f"/v2/models/{MODEL}/config")
    assert status == 200
    parameters = {k: v["string_value"] for k, v in json.loads(text)["parameters"].items()}
    assert parameters["checkpoint"] == "tiny"
    paths = {k: v for k, v in parameters.items() if "/" in v}
    assert not paths, f"parameters showing a path: {paths}"
    served = target.server.env["MOONPIPE_CHECKPOINT"]  # what is really served: not shown
    assert served not in text
