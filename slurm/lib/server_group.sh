#!/bin/bash
# A group of inference servers (vLLM or SGLang) across the nodes of a Slurm job, shared by
# slurm/judge_servers.sbatch and slurm/rollout_servers.sbatch.
#
#   server_group.sh group   on the batch host: start one `node` task per node with srun, wait
#                           until every server answers /health, write ENDPOINTS_FILE (one base
#                           URL per line, atomically), then keep the servers up; remove the file
#                           when the servers stop.
#   server_group.sh node    on each node: start GPUS_PER_NODE / SERVER_TP servers, each on its own
#                           GPUs and port; if one exits, stop the others and fail.
#
# Settings (environment): MODEL (required), ENGINE (vllm | sglang | command), SERVER_TP,
# GPUS_PER_NODE, BASE_PORT, SERVER_ARGS, SERVED_MODEL_NAME, SERVER_COMMAND (ENGINE=command: a
# shell command per server, given MODEL, PORT, SERVER_TP and CUDA_VISIBLE_DEVICES),
# ENDPOINTS_FILE, HEALTH_TIMEOUT, HEALTH_POLL, LOG_ROOT, PYTHON. See the sbatch scripts.

set -euo pipefail

ROLE=${ROLE:?set ROLE (judge or rollout)}
log() { echo "$ROLE-servers [$(date '+%F %T')] $*"; }
die() { echo "$ROLE-servers: error: $*" >&2; exit 2; }

ENGINE=${ENGINE:-vllm}
PYTHON=${PYTHON:-python3}
SERVER_TP=${SERVER_TP:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
SERVERS_PER_NODE=$((GPUS_PER_NODE / SERVER_TP))
BASE_PORT=${BASE_PORT:-30000}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-1800}
HEALTH_POLL=${HEALTH_POLL:-10}
[[ -n ${MODEL:-} || $ENGINE == command ]] || die "set MODEL to the model directory (or hub name) to serve"
((SERVERS_PER_NODE >= 1)) || die "SERVER_TP=$SERVER_TP exceeds GPUS_PER_NODE=$GPUS_PER_NODE"

server_command() {  # port -> the command array SERVER
  local port=$1
  local -a extra=()
  read -r -a extra <<< "${SERVER_ARGS:-}"
  case $ENGINE in
    vllm)
      SERVER=("$PYTHON" -m vllm.entrypoints.openai.api_server --model "$MODEL" --host 0.0.0.0
              --port "$port" --tensor-parallel-size "$SERVER_TP")
      if [[ -n ${SERVED_MODEL_NAME:-} ]]; then SERVER+=(--served-model-name "$SERVED_MODEL_NAME"); fi
      ;;
    sglang)
      SERVER=("$PYTHON" -m sglang.launch_server --model-path "$MODEL" --host 0.0.0.0
              --port "$port" --tp-size "$SERVER_TP")
      if [[ -n ${SERVED_MODEL_NAME:-} ]]; then SERVER+=(--served-model-name "$SERVED_MODEL_NAME"); fi
      ;;
    command)
      [[ -n ${SERVER_COMMAND:-} ]] || die "ENGINE=command needs SERVER_COMMAND"
      SERVER=(bash -c "$SERVER_COMMAND")
      ;;
    *) die "ENGINE must be vllm, sglang or command, got $ENGINE" ;;
  esac
  SERVER+=("${extra[@]}")
}

run_node() {
  local host i port first
  host=$(hostname)
  local -a gpus=() pids=()
  if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
    IFS=, read -r -a gpus <<< "$CUDA_VISIBLE_DEVICES"
  else
    for ((i = 0; i < GPUS_PER_NODE; i++)); do gpus+=("$i"); done
  fi
  # shellcheck disable=SC2317  # called by the trap
  stop_servers() { kill "${pids[@]}" 2>/dev/null || true; }
  trap 'stop_servers; exit 143' TERM INT
  for ((i = 0; i < SERVERS_PER_NODE; i++)); do
    port=$((BASE_PORT + i))
    first=$((i * SERVER_TP))
    server_command "$port"
    local devices
    devices=$(IFS=,; echo "${gpus[*]:first:SERVER_TP}")
    log "$host: server $i on GPUs $devices, port $port: ${SERVER[*]}"
    CUDA_VISIBLE_DEVICES=$devices PORT=$port "${SERVER[@]}" \
      > "$LOG_DIR/$host-server-$i.log" 2>&1 &
    pids+=($!)
  done
  local rc=0
  wait -n "${pids[@]}" || rc=$?
  log "$host: a server exited with status $rc; stopping the others"
  stop_servers
  wait || true
  exit $((rc == 0 ? 1 : rc))
}

run_group() {
  [[ -n ${SLURM_JOB_ID:-} ]] || die "not inside a Slurm job; submit with sbatch"
  local nnodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}} host i url pending
  local -a hosts=() urls=()
  mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  for host in "${hosts[@]}"; do
    for ((i = 0; i < SERVERS_PER_NODE; i++)); do urls+=("http://$host:$((BASE_PORT + i))"); done
  done
  mkdir -p "$(dirname "$ENDPOINTS_FILE")" "$LOG_DIR"
  rm -f "$ENDPOINTS_FILE"  # a previous group's list is stale
  local content
  content=$(printf '%s\n' "${urls[@]}")

  local srun_pid=""
  # shellcheck disable=SC2317,SC2329  # called by the traps
  cleanup() {
    # Remove the list only if it is still ours (a newer group may have replaced it).
    if [[ -f $ENDPOINTS_FILE && $(cat "$ENDPOINTS_FILE") == "$content" ]]; then
      rm -f "$ENDPOINTS_FILE"
    fi
    if [[ -n $srun_pid ]]; then kill "$srun_pid" 2>/dev/null || true; fi
  }
  trap cleanup EXIT
  trap 'log "stopping"; exit 143' TERM INT USR1

  log "starting ${#urls[@]} $ENGINE server(s) on $nnodes node(s); logs in $LOG_DIR"
  srun --kill-on-bad-exit=1 --nodes="$nnodes" --ntasks="$nnodes" --ntasks-per-node=1 \
    --output="$LOG_DIR/node-%n.log" bash "${BASH_SOURCE[0]}" node &
  srun_pid=$!

  local deadline=$((SECONDS + HEALTH_TIMEOUT))
  while :; do
    pending=""
    for url in "${urls[@]}"; do
      if ! curl --silent --fail --max-time 5 --output /dev/null "$url/health"; then
        pending=$url
        break
      fi
    done
    [[ -z $pending ]] && break
    kill -0 "$srun_pid" 2>/dev/null || die "servers exited before $pending was healthy (see $LOG_DIR)"
    ((SECONDS < deadline)) || die "$pending/health did not answer within ${HEALTH_TIMEOUT}s"
    sleep "$HEALTH_POLL"
  done

  local tmp
  tmp=$(mktemp "$(dirname "$ENDPOINTS_FILE")/.endpoints.XXXXXX")
  echo "$content" > "$tmp"
  mv -f "$tmp" "$ENDPOINTS_FILE"
  log "all ${#urls[@]} server(s) healthy; endpoints written to $ENDPOINTS_FILE"

  local rc=0
  wait "$srun_pid" || rc=$?
  srun_pid=""
  log "servers stopped (status $rc)"
  exit "$rc"
}

case ${1:-} in
  group) run_group ;;
  node) run_node ;;
  *) die "usage: server_group.sh group|node" ;;
esac
