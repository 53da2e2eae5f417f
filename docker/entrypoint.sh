#!/usr/bin/env bash
# moonpipe image entrypoint: pick the checkpoint, render the model repository, exec tritonserver.
#
# Environment (defaults set in the Dockerfile; Kubernetes sets them from the ConfigMap):
#   MOONPIPE_CHECKPOINT          checkpoint directory (default /models/checkpoint, a mount point)
#   MOONPIPE_REQUIRE_CHECKPOINT  1: fail when no checkpoint is mounted (production);
#                                0 (default): make the synthetic "tiny" checkpoint instead
#   MOONPIPE_MODEL_REPOSITORY    the image's read-only repository (/opt/moonpipe/model_repository)
#   MOONPIPE_RUNTIME_DIR         writable directory for the rendered copy (/tmp/moonpipe)
#   MOONPIPE_VENV                the Python environment the stub uses (/opt/moonpipe/.venv)
#   MOONPIPE_PARAM_<name>        overrides config.pbtxt parameter <name> (see render_model_repository.py)
#   MOONPIPE_EXIT_TIMEOUT_SECS   how long tritonserver waits for in-flight requests on SIGTERM (30)
#   MOONPIPE_ADMIN_KEY           the key Triton's admin APIs (model repository, shared memory,
#                                trace, logging) require in header moonpipe-admin-key; unset:
#                                a random key, so they are closed (moonpipe/triton_limits.py)
#   TRITON_EXTRA_ARGS            extra tritonserver flags, split on whitespace
# Arguments: flags starting with '-' are appended to tritonserver's; any other command
# (e.g. `bash`) is run instead of the server.
set -euo pipefail

if [[ $# -gt 0 && "$1" != -* ]]; then
    exec "$@"
fi

log() { echo "moonpipe-entrypoint: $*" >&2; }

checkpoint="${MOONPIPE_CHECKPOINT:-/models/checkpoint}"
runtime_dir="${MOONPIPE_RUNTIME_DIR:-/tmp/moonpipe}"
source_repo="${MOONPIPE_MODEL_REPOSITORY:-/opt/moonpipe/model_repository}"
venv_dir="${MOONPIPE_VENV:-/opt/moonpipe/.venv}"
python="${venv_dir}/bin/python"
script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

mkdir -p "${runtime_dir}" "${XDG_CACHE_HOME:-${runtime_dir}/cache}"

has_weights() {
    compgen -G "$1/*.safetensors" > /dev/null
}

if has_weights "${checkpoint}"; then
    log "serving the checkpoint at ${checkpoint}"
elif [[ "${MOONPIPE_REQUIRE_CHECKPOINT:-0}" == "1" ]]; then
    log "no *.safetensors in ${checkpoint} and MOONPIPE_REQUIRE_CHECKPOINT=1: mount a checkpoint (docs/deploy.md)"
    exit 1
else
    synthetic="${runtime_dir}/synthetic-tiny"
    if ! has_weights "${synthetic}"; then
        log "no checkpoint at ${checkpoint}: making the synthetic tiny checkpoint in ${synthetic}"
        moonpipe checkpoint make --preset tiny "${synthetic}"
    fi
    checkpoint="${synthetic}"
fi
export MOONPIPE_CHECKPOINT="${checkpoint}"

rendered="${runtime_dir}/model_repository"
"${python}" "${script_dir}/render_model_repository.py" "${source_repo}" "${rendered}" \
    --env-path "${venv_dir}"

# The stub's shared-memory region fixed for config.pbtxt's max_image_bytes, and the admin
# APIs behind MOONPIPE_ADMIN_KEY: the same flags moonpipe serve and the tests use.
limits="$("${python}" -m moonpipe.triton_limits "${rendered}")"
mapfile -t limit_args <<< "${limits}"
if [[ -n "${MOONPIPE_ADMIN_KEY:-}" ]]; then
    log "admin APIs need header moonpipe-admin-key (MOONPIPE_ADMIN_KEY)"
else
    log "admin APIs closed (set MOONPIPE_ADMIN_KEY to use them)"
fi

read -r -a extra_args <<< "${TRITON_EXTRA_ARGS:-}"
log "starting tritonserver on ${rendered}"
# Not exec: docker stop / the kubelet signal PID 1 only, but the Python-backend stub must
# see SIGTERM too, so the adapter ends streams that cannot drain before the exit timeout
# (model_repository/moondream/1/moondream_signals.py). Forward it to the whole process group.
tritonserver \
    --model-repository="${rendered}" \
    --disable-auto-complete-config \
    --exit-timeout-secs="${MOONPIPE_EXIT_TIMEOUT_SECS:-30}" \
    --http-port=8000 --grpc-port=8001 --metrics-port=8002 \
    "${limit_args[@]}" \
    "${extra_args[@]}" \
    "$@" &
server=$!
# shellcheck disable=SC2329  # invoked by the traps below
forward() {
    trap '' TERM INT  # this shell ignores the signal it is about to send to its group
    log "forwarding $1 to tritonserver and its stub"
    kill -s "$1" 0
}
trap 'forward TERM' TERM
trap 'forward TERM' INT  # the stub drains on SIGTERM (moondream_signals.py), so Ctrl-C becomes TERM
status=0
while kill -0 "${server}" 2> /dev/null; do
    wait "${server}" || status=$?  # returns early when a trapped signal arrives
done
wait "${server}" 2> /dev/null || status=$?
exit "${status}"
