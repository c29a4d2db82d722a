#!/usr/bin/env bash
# A Flower deployment with TLS and SuperNode authentication (flwr 1.41), on loopback by default.
#
#   scripts/tls_deploy.sh WORKDIR up          certs + SuperLink + connection + 2 registered SuperNodes
#   scripts/tls_deploy.sh WORKDIR down        stop every process this script started (by PID)
#
# or step by step:
#   scripts/tls_deploy.sh WORKDIR certs [N]   CA, SuperLink certificate, N SuperNode key pairs (default 2)
#   scripts/tls_deploy.sh WORKDIR superlink   start flower-superlink (TLS + --enable-supernode-auth)
#   scripts/tls_deploy.sh WORKDIR connection  add [superlink.$CONNECTION] to $FLWR_HOME/config.toml
#   scripts/tls_deploy.sh WORKDIR register KEY.pub...          flwr supernode register KEY.pub $CONNECTION
#   scripts/tls_deploy.sh WORKDIR supernode KEY PARTITION NUM_PARTITIONS SPLIT_RATIO [PORT]
#   then: flwr run . $CONNECTION --stream --run-config "output-dir='$PWD/runs'"
#
# Files: WORKDIR/certs/{ca.crt,ca.key,server.pem,server.key}, WORKDIR/keys/node-I{,.pub},
# WORKDIR/logs/*.log, WORKDIR/pids ("PID name" per started process; `down` stops them).
# Environment (defaults): SUPERLINK_HOST (127.0.0.1) and SUPERLINK_PORT (19100) the SuperLink binds;
# SUPERLINK_ADDRESS (127.0.0.1:$SUPERLINK_PORT) where SuperNodes and `flwr` reach it; SERVER_SAN
# (IP:127.0.0.1,DNS:localhost) the certificate's names, add your SuperLink's real name or IP for a
# multi-machine setup; NODE_PORT_BASE (19200) a SuperNode's own port is this + its partition id;
# CONNECTION (tls); FLWR_HOME (~/.flwr); FOREGROUND=1 runs superlink/supernode in the foreground (exec).
# Needs openssl, ssh-keygen (SuperNode keys are ECDSA P-384 in OpenSSH format), curl, and the
# project's venv on PATH (flower-superlink, flower-supernode, flwr).
set -euo pipefail

usage() {
  if [[ ${1:-0} == 0 ]]; then sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; else echo "usage: $0 WORKDIR up|down|certs|superlink|connection|register|supernode (see --help)" >&2; fi
  exit "${1:-0}"
}
[[ ${1:-} == -h || ${1:-} == --help ]] && usage
[[ $# -ge 2 ]] || usage 2
WORK=$(mkdir -p "$1" && cd "$1" && pwd)
CMD=$2
shift 2

SUPERLINK_HOST=${SUPERLINK_HOST:-127.0.0.1}
SUPERLINK_PORT=${SUPERLINK_PORT:-19100}
SUPERLINK_ADDRESS=${SUPERLINK_ADDRESS:-127.0.0.1:$SUPERLINK_PORT}
SERVER_SAN=${SERVER_SAN:-IP:127.0.0.1,DNS:localhost}
NODE_PORT_BASE=${NODE_PORT_BASE:-19200}
CONNECTION=${CONNECTION:-tls}
export FLWR_HOME=${FLWR_HOME:-$HOME/.flwr}
export FLWR_TELEMETRY_ENABLED=${FLWR_TELEMETRY_ENABLED:-0} FLWR_DISABLE_UPDATE_CHECK=${FLWR_DISABLE_UPDATE_CHECK:-1}
CERTS=$WORK/certs KEYS=$WORK/keys LOGS=$WORK/logs PIDS=$WORK/pids

# Start a long-running process: in the background (PID appended to WORKDIR/pids) or, with
# FOREGROUND=1, in place of this script (the caller then owns the PID).
launch() {
  local name=$1
  shift
  if [[ ${FOREGROUND:-0} == 1 ]]; then exec "$@"; fi
  mkdir -p "$LOGS"
  nohup "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo "$! $name" >>"$PIDS"
  echo "started $name: PID $!, log $LOGS/$name.log"
}

certs() {
  local n=${1:-2} i
  mkdir -p "$CERTS" "$KEYS"
  if [[ ! -f $CERTS/ca.crt ]]; then
    openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 365 -subj "/CN=Flower MSfusion CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$CERTS/ca.key" -out "$CERTS/ca.crt" 2>/dev/null
    openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=flower-superlink" \
      -keyout "$CERTS/server.key" -out "$CERTS/server.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=$SERVER_SAN" "basicConstraints=CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
      "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" >"$CERTS/server.ext"
    openssl x509 -req -sha256 -days 365 -in "$CERTS/server.csr" -CA "$CERTS/ca.crt" -CAkey "$CERTS/ca.key" \
      -CAcreateserial -extfile "$CERTS/server.ext" -out "$CERTS/server.pem" 2>/dev/null
    chmod 600 "$CERTS/ca.key" "$CERTS/server.key"
    echo "CA $CERTS/ca.crt; SuperLink certificate $CERTS/server.pem for $SERVER_SAN"
  fi
  for ((i = 0; i < n; i++)); do
    [[ -f $KEYS/node-$i ]] || ssh-keygen -q -t ecdsa -b 384 -N "" -C "supernode-$i" -f "$KEYS/node-$i"
  done
  echo "SuperNode keys: $KEYS/node-{0..$((n - 1))} (private) and .pub (register these)"
}

superlink() {
  launch superlink flower-superlink \
    --ssl-ca-certfile "$CERTS/ca.crt" --ssl-certfile "$CERTS/server.pem" --ssl-keyfile "$CERTS/server.key" \
    --enable-supernode-auth --disable-runtime-dependency-installation \
    --host "$SUPERLINK_HOST" --port "$SUPERLINK_PORT"
}

wait_superlink() {
  local i
  for ((i = 0; i < 120; i++)); do
    curl -fsS --cacert "$CERTS/ca.crt" "https://$SUPERLINK_ADDRESS/health" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "SuperLink not healthy at https://$SUPERLINK_ADDRESS after 60 s" >&2
  return 1
}

connection() {
  local toml=$FLWR_HOME/config.toml
  [[ -f $toml ]] || flwr config ls >/dev/null # writes Flower's default config.toml first
  if grep -q "^\[superlink\.$CONNECTION\]" "$toml"; then
    echo "[superlink.$CONNECTION] already in $toml (left unchanged)"
    return
  fi
  printf '\n[superlink.%s]\naddress = "%s"\nroot-certificates = "%s"\n' \
    "$CONNECTION" "$SUPERLINK_ADDRESS" "$CERTS/ca.crt" >>"$toml"
  echo "added [superlink.$CONNECTION] to $toml"
}

register() {
  local key
  for key in "$@"; do flwr supernode register "$key" "$CONNECTION"; done
}

supernode() {
  [[ $# -ge 4 ]] || usage 2
  local key=$1 pid=$2 num=$3 ratio=$4 port=${5:-$((NODE_PORT_BASE + $2))}
  launch "supernode-$pid" flower-supernode \
    --superlink "$SUPERLINK_ADDRESS" --root-certificates "$CERTS/ca.crt" \
    --auth-supernode-private-key "$key" --port "$port" \
    --node-config "partition-id=$pid num-partitions=$num split-ratio=$ratio"
}

# A process and its descendants (Flower's superexec, serverapp and clientapp processes), by PID.
tree() { local c; echo "$1"; for c in $(pgrep -P "$1" || true); do tree "$c"; done; }

down() {
  [[ -f $PIDS ]] || { echo "no $PIDS"; return; }
  local pid name i all=() pids=()
  while read -r pid name; do
    grep -qa flower "/proc/$pid/cmdline" 2>/dev/null || continue # gone (or the PID was reused)
    all+=($(tree "$pid"))
    echo "stopping $name (PID $pid)"
  done <"$PIDS"
  ((${#all[@]})) || { rm -f "$PIDS"; return; }
  kill "${all[@]}" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do # up to 10 s, then SIGKILL what is left
    pids=()
    for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && pids+=("$pid"); done
    ((${#pids[@]})) || break
    sleep 0.2
  done
  ((${#pids[@]})) && kill -9 "${pids[@]}" 2>/dev/null || true
  rm -f "$PIDS"
}

case $CMD in
  certs) certs "$@" ;;
  superlink) superlink ;;
  connection) connection ;;
  register) register "$@" ;;
  supernode) supernode "$@" ;;
  down | stop) down ;;
  up)
    certs 2
    superlink
    wait_superlink
    connection
    register "$KEYS/node-0.pub" "$KEYS/node-1.pub"
    supernode "$KEYS/node-0" 0 2 1.0
    supernode "$KEYS/node-1" 1 2 0.5
    echo "now: flwr run . $CONNECTION --stream --run-config \"output-dir='\$PWD/runs'\"; then: $0 $WORK down"
    ;;
  -h | --help | help) usage ;;
  *) usage 2 ;;
esac
