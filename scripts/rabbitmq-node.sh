#!/usr/bin/env bash
# Start and stop a private, throw-away RabbitMQ node for the tests.
#
#   scripts/rabbitmq-node.sh start DIR   start a node whose whole state lives in DIR;
#                                        prints its AMQP URL on stdout once the node
#                                        accepts AMQP connections
#   scripts/rabbitmq-node.sh stop DIR    stop it (idempotent; kills it if a clean
#                                        stop does not work)
#   scripts/rabbitmq-node.sh url DIR     print the URL of the node started in DIR
#   scripts/rabbitmq-node.sh ctl DIR ARGS...
#                                        run `rabbitmqctl -n NODE ARGS...` against it
#                                        (e.g. `ctl DIR list_queues`, `ctl DIR stop_app`)
#   scripts/rabbitmq-node.sh restart DIR start the node in DIR again as the same node:
#                                        same name, ports, cookie and data (a killed
#                                        cluster member comes back with its queues);
#                                        stops it first if it runs; prints its URL
#   scripts/rabbitmq-node.sh kill DIR    SIGKILL the node's VM and launcher (a crash,
#                                        for fault tests) and wait until they are gone;
#                                        its state stays in DIR for `restart`
#
# The node never touches a broker that already runs on the machine: it gets its
# own node name (gwtest-<random>@localhost), free random AMQP and distribution
# ports on 127.0.0.1, its own Erlang cookie and HOME, no plugins, and ignores
# /etc/rabbitmq entirely. It registers its name with the machine's epmd (port
# 4369) like any Erlang node, and starts one if none runs.
#
# Other scripts may `source` this file for its helpers (scripts/rabbitmq-cluster.sh
# does); it only acts when run.
#
# Environment:
#   RABBITMQ_NODE_COOKIE           Erlang cookie for the node (letters, digits, `_`),
#                                  e.g. one shared by the members of a cluster; it is
#                                  written to DIR/.erlang.cookie. Without it a cookie
#                                  already in DIR/.erlang.cookie is kept, else a
#                                  random one is made.
#   RABBITMQ_SBIN                  directory holding rabbitmq-server and rabbitmqctl
#                                  (default: /usr/lib/rabbitmq/bin on Debian/Ubuntu,
#                                  else the directory of rabbitmq-server on PATH)
#   RABBITMQ_NODE_START_TIMEOUT    seconds to wait for the node (default 60)
set -euo pipefail

PROG=rabbitmq-node

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
usage() {
    cat >&2 <<EOF
usage: $0 start DIR    start a private node in DIR, print its AMQP URL
       $0 stop DIR     stop the node started in DIR (idempotent)
       $0 url DIR      print the AMQP URL of the node started in DIR
       $0 ctl DIR ARGS run rabbitmqctl against the node started in DIR
       $0 restart DIR  start the node in DIR again with its name, ports and data
       $0 kill DIR     SIGKILL the node started in DIR and wait until it is gone
EOF
    exit 2
}

# Seconds since the epoch with sub-second precision where bash has it.
now() {
    if [[ -n "${EPOCHREALTIME:-}" ]]; then
        printf '%s\n' "${EPOCHREALTIME/,/.}"
    else
        date +%s
    fi
}

# Run a command with a time limit when `timeout` (GNU coreutils) exists.
with_timeout() {
    local secs=$1
    shift
    if command -v timeout >/dev/null 2>&1; then
        timeout --kill-after=5 "$secs" "$@"
    else
        "$@"
    fi
}

find_rabbitmq() {
    local server
    if [[ -n "${RABBITMQ_SBIN:-}" ]]; then
        SBIN=$RABBITMQ_SBIN
    elif [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
        # Debian/Ubuntu: /usr/sbin/rabbitmq-server is a wrapper that, as root,
        # re-runs the server as user `rabbitmq` from /var/lib/rabbitmq (losing
        # HOME); the real scripts are here and run fine as any user.
        SBIN=/usr/lib/rabbitmq/bin
    elif server=$(command -v rabbitmq-server 2>/dev/null) ||
        server=$(PATH="$PATH:/usr/sbin:/usr/local/sbin:/opt/homebrew/sbin" command -v rabbitmq-server 2>/dev/null); then
        SBIN=$(dirname "$server")
    else
        die "rabbitmq-server is not installed.
  Install it:  apt-get install rabbitmq-server   (Debian/Ubuntu)
               brew install rabbitmq             (macOS)
  or point the tests at an existing broker instead:
               AMQP_URL=amqp://USER:PASS@HOST:5672/%2f scripts/test.sh"
    fi
    [[ -x "$SBIN/rabbitmq-server" ]] || die "no executable rabbitmq-server in $SBIN"
    [[ -x "$SBIN/rabbitmqctl" ]] || die "no executable rabbitmqctl in $SBIN"
}

# Exit 0 if TCP port $1 is free on this host.
port_free() {
    local port=$1
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$port" <<'EOF'
import socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.bind(("0.0.0.0", port))  # fails if anything uses the port on any IPv4 address
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
    elif command -v ss >/dev/null 2>&1; then
        [[ -z "$(ss -Htan "( sport = :$port )" 2>/dev/null)" ]]
    else
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 1; fi
    fi
}

# Print a free port from [lo, lo+span), not equal to $3 (if given).
pick_port() {
    local lo=$1 span=$2 avoid=${3:-} port i
    for ((i = 0; i < 100; i++)); do
        port=$((lo + (RANDOM * 32768 + RANDOM) % span))
        [[ "$port" == "$avoid" ]] && continue
        if port_free "$port"; then
            echo "$port"
            return 0
        fi
    done
    die "no free TCP port found in $lo..$((lo + span - 1))"
}

random_hex() { # $1 bytes
    od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

# Exit 0 if an AMQP 0-9-1 server answers on 127.0.0.1:$1 with connection.start.
amqp_ready() {
    local port=$1
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$port" <<'EOF' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.settimeout(2)
s.sendall(b"AMQP\x00\x00\x09\x01")
data = b""
while len(data) < 11:
    chunk = s.recv(11 - len(data))
    if not chunk:
        sys.exit(1)
    data += chunk
s.close()
# method frame (type 1) on channel 0 carrying connection.start (class 10, method 10)
sys.exit(0 if data[0] == 1 and data[1:3] == b"\0\0" and data[7:11] == b"\0\x0a\0\x0a" else 1)
EOF
    else
        local first
        # shellcheck disable=SC2016 # $1 expands in the inner shell
        first=$(with_timeout 3 bash -c '
            exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
            printf "AMQP\0\0\11\1" >&3
            head -c 1 <&3 | od -An -tu1' _ "$port" 2>/dev/null) || return 1
        [[ "${first// /}" == 1 ]]
    fi
}

pid_alive() {
    [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
    # A zombie has exited (its ports are closed) and only waits to be reaped,
    # which a killed node's orphans may wait for a while.
    local stat
    stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ "${stat// /}" != Z* ]]
}

# The Erlang VM of the node started in $DIR: the pid in its pid file, or (if
# the VM died before writing it) the process whose command line has
# `-home $DIR`, which only our node has.
node_pid() {
    local pid args
    pid=$(cat "$DIR/rabbitmq.pid" 2>/dev/null) || pid=
    if [[ "$pid" =~ ^[0-9]+$ ]] && pid_alive "$pid"; then
        case "$(ps -p "$pid" -o args= 2>/dev/null)" in
        *"-home $DIR "* | *"-home $DIR") echo "$pid" && return 0 ;;
        esac
    fi
    while read -r pid args; do
        case "$args" in
        *beam*"-home $DIR "* | *beam*"-home $DIR") echo "$pid" && return 0 ;;
        esac
    done < <(ps -eo pid=,args= 2>/dev/null)
    return 1
}

# The `sh rabbitmq-server` process we started (it waits for the VM).
launcher_pid() {
    local pid
    pid=$(cat "$DIR/launcher.pid" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    pid_alive "$pid" || return 1
    case "$(ps -p "$pid" -o args= 2>/dev/null)" in
    *rabbitmq-server*) echo "$pid" ;;
    *) return 1 ;;
    esac
}

running() { node_pid >/dev/null || launcher_pid >/dev/null; }

# Environment for both the server and the CLI. Everything lives in $DIR and
# nothing is read from /etc/rabbitmq or the caller's RABBITMQ_* variables.
node_env() {
    local v
    for v in $(compgen -e); do
        case "$v" in
        RABBITMQ_*) unset "$v" ;;
        esac
    done
    export HOME="$DIR" # Erlang reads the cookie from $HOME/.erlang.cookie
    export RABBITMQ_NODENAME="$NODE"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$PORT"
    export RABBITMQ_DIST_PORT="$DIST_PORT"
    export RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$DIR/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$DIR/mnesia"
    export RABBITMQ_LOG_BASE="$DIR/log"
    export RABBITMQ_LOGS="$DIR/log/node.log"
    export RABBITMQ_PID_FILE="$DIR/rabbitmq.pid"
    # Erlang distribution on loopback only.
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export ERL_CRASH_DUMP="$DIR/erl_crash.dump"
    # Only used if this node has to start epmd itself: keep it on loopback.
    export ERL_EPMD_ADDRESS="${ERL_EPMD_ADDRESS:-127.0.0.1}"
}

load_state() {
    [[ -f "$DIR/node.env" ]] || return 1
    # shellcheck disable=SC1091
    source "$DIR/node.env"
}

# rabbitmqctl_node SECONDS ARGS...: rabbitmqctl against our node, time-limited
# (0 = no limit).
rabbitmqctl_node() {
    local secs=$1
    shift
    (
        node_env
        if ((secs > 0)); then
            with_timeout "$secs" "$SBIN/rabbitmqctl" -n "$NODE" "$@"
        else
            exec "$SBIN/rabbitmqctl" -n "$NODE" "$@"
        fi
    )
}

log_tail() {
    local f
    for f in "$DIR/log/startup.log" "$DIR/log/node.log"; do
        if [[ -s "$f" ]]; then
            printf -- '----- last lines of %s -----\n' "$f" >&2
            tail -n 40 "$f" >&2
        fi
    done
}

write_config() {
    mkdir -p "$DIR/mnesia" "$DIR/log"
    : >"$DIR/rabbitmq-env.conf" # shadows /etc/rabbitmq/rabbitmq-env.conf
    echo '[].' >"$DIR/enabled_plugins" # no plugins: no management on :15672
    echo '[].' >"$DIR/advanced.config"
    cat >"$DIR/rabbitmq.conf" <<EOF
# Private test node $NODE, generated by scripts/rabbitmq-node.sh
listeners.tcp.1 = 127.0.0.1:$PORT
# guest/guest may log in over loopback (the default; stated for clarity)
loopback_users.guest = true
# a test node on a nearly full disk should still accept publishes
disk_free_limit.absolute = 10MB
log.console = false
log.file.level = info
EOF
    {
        printf 'NODE=%q\n' "$NODE"
        printf 'PORT=%q\n' "$PORT"
        printf 'DIST_PORT=%q\n' "$DIST_PORT"
        printf 'URL=%q\n' "$URL"
        printf 'SBIN=%q\n' "$SBIN"
    } >"$DIR/node.env"
}

# The node's Erlang cookie in $DIR/.erlang.cookie (Erlang reads it from
# $HOME, which node_env sets to $DIR): the caller's RABBITMQ_NODE_COOKIE, else
# the one already there, else a random one.
setup_cookie() {
    local cookie=${RABBITMQ_NODE_COOKIE:-}
    if [[ -n "$cookie" ]]; then
        # An Erlang atom without quoting, and nothing a shell or a log mangles.
        [[ "$cookie" =~ ^[A-Za-z0-9_]{1,255}$ ]] ||
            die "RABBITMQ_NODE_COOKIE must be 1 to 255 letters, digits or underscores"
        (
            umask 077
            printf '%s' "$cookie" >"$DIR/.erlang.cookie"
        )
    elif [[ ! -s "$DIR/.erlang.cookie" ]]; then
        (
            umask 077
            printf 'GW%s' "$(random_hex 16 | tr 'a-f' 'A-F')" >"$DIR/.erlang.cookie"
        )
    fi
    chmod 600 "$DIR/.erlang.cookie"
}

# Start the server configured in $DIR (NODE, PORT, DIST_PORT set) and wait up
# to $timeout seconds until it accepts AMQP. Sets LAUNCHED=1 when it does and
# LAUNCHED=0 when it exited because a port was taken; dies on anything else.
launch() {
    local launcher deadline
    LAUNCHED=0
    (
        node_env
        cd "$DIR"
        exec "$SBIN/rabbitmq-server"
    ) </dev/null >>"$DIR/log/startup.log" 2>&1 &
    launcher=$!
    echo "$launcher" >"$DIR/launcher.pid"

    deadline=$(($(date +%s) + timeout))
    while :; do
        if amqp_ready "$PORT"; then
            LAUNCHED=1
            return 0
        fi
        if ! pid_alive "$launcher"; then
            wait "$launcher" 2>/dev/null || true
            if grep -qs -e eaddrinuse -e 'address already in use' "$DIR/log/startup.log" "$DIR/log/node.log"; then
                return 0
            fi
            log_tail
            die "RabbitMQ node $NODE exited during start-up (logs above, all files in $DIR)"
        fi
        if (($(date +%s) >= deadline)); then
            log_tail
            (cmd_stop) >/dev/null 2>&1 || true
            kill -KILL "$launcher" 2>/dev/null || true
            die "RabbitMQ node $NODE did not accept AMQP connections on 127.0.0.1:$PORT within ${timeout}s (logs above, all files in $DIR)"
        fi
        sleep 0.3
    done
}

since() { # seconds since $1, one decimal
    awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'
}

cmd_start() {
    find_rabbitmq
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd -P)
    case "$DIR" in
    *[[:space:]]*) die "DIR must not contain whitespace: '$DIR'" ;;
    esac

    if load_state && running; then
        die "a node ($NODE, $URL) is already running from $DIR; stop it first"
    fi
    rm -f "$DIR/rabbitmq.pid" "$DIR/launcher.pid"

    local t0 timeout attempt
    t0=$(now)
    timeout=${RABBITMQ_NODE_START_TIMEOUT:-60}

    # Our own Erlang cookie, used by the node and by our rabbitmqctl calls.
    setup_cookie

    NODE="gwtest-$(random_hex 4)@localhost"
    for attempt in 1 2 3; do
        # AMQP port below the Linux ephemeral range (32768+); distribution port
        # in another band. RabbitMQ's CLI uses 35672-35682 for itself.
        PORT=$(pick_port 20000 10000)
        DIST_PORT=$(pick_port 10000 10000 "$PORT")
        URL="amqp://guest:guest@127.0.0.1:$PORT/%2f"
        write_config
        : >"$DIR/log/startup.log"
        : >"$DIR/log/node.log"

        launch
        if ((LAUNCHED)); then
            log "node $NODE accepts AMQP on 127.0.0.1:$PORT (dist port $DIST_PORT) after $(since "$t0")s; state in $DIR"
            printf '%s\n' "$URL"
            return 0
        fi
        ((attempt < 3)) || break
        log "port clash (AMQP $PORT / dist $DIST_PORT), retrying with other ports"
    done
    log_tail
    die "could not start RabbitMQ node $NODE: its ports were taken on 3 attempts (logs above, all files in $DIR)"
}

# Start the node in $DIR again as the same node: same name (so a cluster takes
# it back as the member it was), same ports (so clients' URLs still point at
# it), same cookie and data directory (so its queues and messages come back).
cmd_restart() {
    [[ -d "$DIR" ]] || die "$DIR does not exist: nothing to restart (use start)"
    DIR=$(cd "$DIR" && pwd -P)
    load_state || die "no node was started in $DIR: nothing to restart (use start)"
    [[ -x "$SBIN/rabbitmq-server" ]] || find_rabbitmq

    local t0 timeout
    t0=$(now)
    timeout=${RABBITMQ_NODE_START_TIMEOUT:-60}
    if running; then
        log "node $NODE is running: stopping it before the restart"
        cmd_stop
    fi
    rm -f "$DIR/rabbitmq.pid" "$DIR/launcher.pid"
    setup_cookie
    printf -- '----- restart at %s -----\n' "$(date -u '+%Y-%m-%d %H:%M:%S')" >>"$DIR/log/startup.log"

    launch
    ((LAUNCHED)) || {
        log_tail
        die "RabbitMQ node $NODE cannot come back: port $PORT (AMQP) or $DIST_PORT (distribution) is taken by another process now (logs above, all files in $DIR)"
    }
    log "node $NODE restarted: accepts AMQP on 127.0.0.1:$PORT after $(since "$t0")s; state in $DIR"
    printf '%s\n' "$URL"
}

# A crash: SIGKILL to the VM and to the launcher (so the launcher's trap does
# not run `rabbitmqctl stop`), then wait until both are gone. Nothing is
# cleaned up; the data stays for `restart`.
cmd_kill() {
    [[ -d "$DIR" ]] || die "$DIR does not exist: no node to kill"
    DIR=$(cd "$DIR" && pwd -P)
    load_state || die "no node was started in $DIR"
    if ! running; then
        log "node $NODE is not running"
        return 0
    fi
    local t0 pid launcher
    t0=$(now)
    pid=$(node_pid) || pid=
    launcher=$(launcher_pid) || launcher=
    # `|| true`: either may exit on its own between the look-up and the signal.
    if [[ -n "$pid" ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
    if [[ -n "$launcher" ]]; then kill -KILL "$launcher" 2>/dev/null || true; fi
    wait_gone 10 || die "node $NODE (pid ${pid:--}, launcher ${launcher:--}) is still alive 10s after SIGKILL"
    rm -f "$DIR/rabbitmq.pid" "$DIR/launcher.pid"
    log "node $NODE killed (SIGKILL to pid ${pid:--}, launcher ${launcher:--}); gone after $(since "$t0")s"
}

# Wait up to $1 seconds for the node's processes to be gone.
wait_gone() {
    local end=$(($(date +%s) + $1))
    while running; do
        (($(date +%s) >= end)) && return 1
        sleep 0.2
    done
    return 0
}

cmd_stop() {
    if [[ ! -d "$DIR" ]]; then
        log "nothing to stop: $DIR does not exist"
        return 0
    fi
    DIR=$(cd "$DIR" && pwd -P)
    if ! load_state; then
        log "nothing to stop: no node was started in $DIR"
        return 0
    fi
    if ! running; then
        log "node $NODE is not running"
        rm -f "$DIR/rabbitmq.pid" "$DIR/launcher.pid"
        return 0
    fi

    local pid launcher grace=0
    # 1. a clean stop through the CLI, bounded
    if node_pid >/dev/null; then
        if rabbitmqctl_node 30 stop >/dev/null 2>&1; then
            grace=15
        else
            log "rabbitmqctl stop of $NODE failed; using signals"
        fi
    fi
    # 2. SIGTERM (the VM shuts down gracefully on it), then SIGKILL
    if ! wait_gone "$grace"; then
        pid=$(node_pid) || pid=
        launcher=$(launcher_pid) || launcher=
        log "sending SIGTERM to node $NODE (pid ${pid:--}, launcher ${launcher:--})"
        if [[ -n "$pid" ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
        if [[ -n "$launcher" ]]; then kill -TERM "$launcher" 2>/dev/null || true; fi
        if ! wait_gone 15; then
            pid=$(node_pid) || pid=
            launcher=$(launcher_pid) || launcher=
            log "sending SIGKILL to node $NODE (pid ${pid:--}, launcher ${launcher:--})"
            if [[ -n "$pid" ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
            if [[ -n "$launcher" ]]; then kill -KILL "$launcher" 2>/dev/null || true; fi
            wait_gone 10 || die "node $NODE (pid ${pid:--}) did not die"
        fi
    fi
    rm -f "$DIR/rabbitmq.pid" "$DIR/launcher.pid"
    log "node $NODE stopped"
}

main() {
    (($# >= 2)) || usage
    local cmd=$1
    DIR=$2
    shift 2
    case "$cmd" in
    start)
        (($# == 0)) || usage
        cmd_start
        ;;
    stop)
        (($# == 0)) || usage
        cmd_stop
        ;;
    url)
        DIR=$(cd "$DIR" && pwd -P)
        load_state || die "no node was started in $DIR"
        running || die "node $NODE is not running"
        printf '%s\n' "$URL"
        ;;
    ctl)
        DIR=$(cd "$DIR" && pwd -P)
        load_state || die "no node was started in $DIR"
        rabbitmqctl_node 0 "$@"
        ;;
    restart)
        (($# == 0)) || usage
        cmd_restart
        ;;
    kill)
        (($# == 0)) || usage
        cmd_kill
        ;;
    *) usage ;;
    esac
}

# Run unless sourced for the helpers above.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
