#!/usr/bin/env bash
# Start and stop a private, throw-away RabbitMQ cluster on loopback for the
# tests: N nodes made by scripts/rabbitmq-node.sh, one per directory.
#
#   scripts/rabbitmq-cluster.sh start DIR [N]   start N nodes (default 3) in
#                                        DIR/node1..DIR/nodeN sharing one random
#                                        Erlang cookie, join nodes 2..N to node1,
#                                        print the nodes' AMQP URLs on stdout,
#                                        comma-separated, in node order
#   scripts/rabbitmq-cluster.sh stop DIR      stop every node (idempotent)
#   scripts/rabbitmq-cluster.sh urls DIR      print the URLs again (all nodes,
#                                        running or not: they do not change)
#   scripts/rabbitmq-cluster.sh nodes DIR     print the Erlang node names, one a line
#   scripts/rabbitmq-cluster.sh kill DIR I    SIGKILL node I and wait until it is gone
#   scripts/rabbitmq-cluster.sh restart DIR I start node I again (same name, ports and
#                                        data), wait until it accepts AMQP and the
#                                        cluster counts it running; print its URL
#   scripts/rabbitmq-cluster.sh ctl DIR I ARGS...
#                                        run `rabbitmqctl -n NODE ARGS...` against node I
#
# Nodes are numbered 1..N here, as their directories are; testkit::PrivateCluster
# numbers the same nodes 0..N-1. Each node is a private node of
# scripts/rabbitmq-node.sh: its own name (gwtest-<random>@localhost), random
# AMQP and distribution ports on 127.0.0.1, no plugins, nothing read from
# /etc/rabbitmq. The cluster never touches a broker that already runs on the
# machine (rabbit@<hostname> on port 5672 included): it only talks to the
# nodes it started, by name, with a cookie only they know.
#
# Timings go to stderr. Environment:
#   RABBITMQ_CLUSTER_PARALLEL      1 (default): start the nodes at the same time;
#                                  0: one after the other (slower on 2 cores:
#                                  a node's boot is only about half CPU-bound)
#   RABBITMQ_CLUSTER_JOIN_TIMEOUT  seconds for each rabbitmqctl step of a join
#                                  (default 60)
#   RABBITMQ_SBIN, RABBITMQ_NODE_START_TIMEOUT  as for scripts/rabbitmq-node.sh
set -euo pipefail

NODE_SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/rabbitmq-node.sh"
[[ -r "$NODE_SCRIPT" ]] || {
    printf 'rabbitmq-cluster: error: %s is missing (it comes with this script)\n' "$NODE_SCRIPT" >&2
    exit 1
}
# Its helpers (find_rabbitmq, log, die, now, since, random_hex, with_timeout);
# sourcing it runs nothing.
# shellcheck source=scripts/rabbitmq-node.sh
source "$NODE_SCRIPT"
PROG=rabbitmq-cluster

usage() {
    cat >&2 <<EOF
usage: $0 start DIR [N]       start an N-node cluster (default 3), print its AMQP URLs
       $0 stop DIR            stop every node of the cluster in DIR (idempotent)
       $0 urls DIR            print the nodes' AMQP URLs, comma-separated
       $0 nodes DIR           print the nodes' Erlang names, one a line
       $0 kill DIR I          SIGKILL node I (1..N)
       $0 restart DIR I       start node I again and wait until it is back in the cluster
       $0 ctl DIR I ARGS...   run rabbitmqctl against node I
EOF
    exit 2
}

node_dir() { printf '%s/node%s\n' "$DIR" "$1"; }

# field I NAME: a value saved by rabbitmq-node.sh in node I's node.env.
field() {
    local file
    file="$(node_dir "$1")/node.env"
    [[ -f "$file" ]] || die "node $1 has no state in $(node_dir "$1")"
    (
        # shellcheck disable=SC1090
        source "$file"
        printf '%s\n' "${!2}"
    )
}

# The number of nodes of the cluster in DIR (from cluster.env).
load_cluster() {
    [[ -d "$DIR" ]] || die "$DIR does not exist: no cluster was started there"
    DIR=$(cd "$DIR" && pwd -P)
    [[ -f "$DIR/cluster.env" ]] || die "no cluster was started in $DIR"
    # shellcheck disable=SC1091
    source "$DIR/cluster.env"
    [[ "${N:-}" =~ ^[1-9][0-9]*$ ]] || die "$DIR/cluster.env is damaged"
}

check_index() {
    if ! [[ "$1" =~ ^[1-9][0-9]*$ ]] || (($1 > N)); then
        die "node index must be 1..$N, not '$1'"
    fi
}

# node_script_bounded SECONDS ARGS...: rabbitmq-node.sh ARGS..., time-limited.
node_script_bounded() {
    local secs=$1
    shift
    with_timeout "$secs" "$NODE_SCRIPT" "$@"
}

# ctl_quiet I SECONDS ARGS...: rabbitmqctl against node I, stdout dropped (so
# `start` prints only the URLs), failures named.
ctl_quiet() {
    local i=$1 secs=$2
    shift 2
    node_script_bounded "$secs" ctl "$(node_dir "$i")" "$@" >/dev/null ||
        die "rabbitmqctl $* on node $i ($(field "$i" NODE)) failed or took over ${secs}s"
}

# Node names the node behind `ctl` I sees running in its cluster, one a line.
running_nodes() {
    local json
    json=$(node_script_bounded 30 ctl "$(node_dir "$1")" cluster_status --formatter json 2>/dev/null) || return 1
    # "running_nodes":["a@localhost","b@localhost"]: node names hold no quotes,
    # commas or brackets.
    json=${json#*\"running_nodes\":[}
    [[ "$json" != *\"running_nodes\"* ]] || return 1
    json=${json%%]*}
    tr -d '"' <<<"$json" | tr ',' '\n' | sed '/^$/d'
}

# run_each COMMAND I...: COMMAND I for each I, at the same time when
# RABBITMQ_CLUSTER_PARALLEL is not 0; fails (after all ended) if any failed.
run_each() {
    local cmd=$1 i failed=0
    shift
    if [[ "${RABBITMQ_CLUSTER_PARALLEL:-1}" == 0 ]]; then
        for i in "$@"; do "$cmd" "$i" || failed=1; done
        return "$failed"
    fi
    local -a pids=()
    for i in "$@"; do
        "$cmd" "$i" &
        pids+=("$!")
    done
    for i in "${pids[@]}"; do wait "$i" || failed=1; done
    return "$failed"
}

start_node() { "$NODE_SCRIPT" start "$(node_dir "$1")" >"$(node_dir "$1")/url"; }
stop_app() { ctl_quiet "$1" "$JOIN_TIMEOUT" stop_app; }
start_app() { ctl_quiet "$1" "$JOIN_TIMEOUT" start_app; }
stop_node() { "$NODE_SCRIPT" stop "$1"; }

urls() {
    local i list=
    for ((i = 1; i <= N; i++)); do list+="${list:+,}$(field "$i" URL)"; done
    printf '%s\n' "$list"
}

STARTING=0
# On a failed start, stop what was started: no node outlives a failed start.
on_exit() {
    local rc=$?
    if ((STARTING && rc != 0)); then
        log "start failed: stopping the nodes started in $DIR (files kept there)"
        cmd_stop >/dev/null 2>&1 || true
    fi
    exit "$rc"
}

cmd_start() {
    local n=$1 i t0 t1 tj cookie node1 seen
    [[ "$n" =~ ^[1-9][0-9]?$ ]] || die "N must be a number from 1 to 99, not '$n'"
    find_rabbitmq
    JOIN_TIMEOUT=${RABBITMQ_CLUSTER_JOIN_TIMEOUT:-60}
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd -P)
    case "$DIR" in
    *[[:space:]]*) die "DIR must not contain whitespace: '$DIR'" ;;
    esac
    [[ ! -e "$DIR/cluster.env" ]] || die "a cluster was already started in $DIR: stop it and use another directory"
    N=$n
    printf 'N=%q\n' "$N" >"$DIR/cluster.env"
    STARTING=1
    trap on_exit EXIT

    t0=$(now)
    # One cookie for all: the nodes must reach each other and our rabbitmqctl
    # calls must reach every node. rabbitmq-node.sh keeps a cookie it finds.
    cookie="GWC$(random_hex 16 | tr 'a-f' 'A-F')"
    for ((i = 1; i <= N; i++)); do
        mkdir -p "$(node_dir "$i")"
        (
            umask 077
            printf '%s' "$cookie" >"$(node_dir "$i")/.erlang.cookie"
        )
    done
    local mode=parallel
    [[ "${RABBITMQ_CLUSTER_PARALLEL:-1}" != 0 ]] || mode=sequential
    # shellcheck disable=SC2046 # a list of numbers
    run_each start_node $(seq 1 "$N") || die "a node of the cluster did not start (its log is above; all files in $DIR)"
    t1=$(now)
    log "$N nodes started ($mode) in $(since "$t0")s"

    if ((N > 1)); then
        node1=$(field 1 NODE)
        # stop_app on all at once; join one at a time (each join changes the
        # cluster's schema on node1); start_app on all at once.
        local stopped joined
        # shellcheck disable=SC2046
        run_each stop_app $(seq 2 "$N")
        stopped=$(since "$t1")
        tj=$(now)
        for ((i = 2; i <= N; i++)); do
            ctl_quiet "$i" "$JOIN_TIMEOUT" join_cluster "$node1"
        done
        joined=$(since "$tj")
        tj=$(now)
        # shellcheck disable=SC2046
        run_each start_app $(seq 2 "$N")
        log "stop_app ${stopped}s, join_cluster ${joined}s, start_app $(since "$tj")s"
        # start_app returns once the app runs; check node1 agrees, bounded.
        local deadline=$(($(date +%s) + JOIN_TIMEOUT))
        while :; do
            seen=$(running_nodes 1 | wc -l) || seen=0
            ((seen == N)) && break
            (($(date +%s) < deadline)) || die "node1 ($node1) sees $seen of $N nodes running after ${JOIN_TIMEOUT}s"
            sleep 0.5
        done
        log "nodes 2..$N joined node1 ($node1) in $(since "$t1")s"
    fi
    STARTING=0
    log "cluster of $N nodes running after $(since "$t0")s; state in $DIR"
    urls
}

cmd_stop() {
    if [[ ! -d "$DIR" ]]; then
        log "nothing to stop: $DIR does not exist"
        return 0
    fi
    DIR=$(cd "$DIR" && pwd -P)
    local t0 d
    local -a dirs=()
    t0=$(now)
    for d in "$DIR"/node[0-9]*; do
        [[ -d "$d" ]] && dirs+=("$d")
    done
    if ((${#dirs[@]} == 0)); then
        log "nothing to stop: no nodes in $DIR"
        return 0
    fi
    run_each stop_node "${dirs[@]}" || die "a node in $DIR did not stop (see above)"
    log "${#dirs[@]} nodes in $DIR stopped in $(since "$t0")s"
}

cmd_restart() {
    local i=$1 t0 node url j peer='' deadline timeout seen
    t0=$(now)
    node=$(field "$i" NODE)
    url=$("$NODE_SCRIPT" restart "$(node_dir "$i")")
    # Running in the cluster: a running peer lists it among its running nodes
    # (its own view if no peer runs).
    for ((j = 1; j <= N; j++)); do
        if ((j != i)) && "$NODE_SCRIPT" url "$(node_dir "$j")" >/dev/null 2>&1; then
            peer=$j
            break
        fi
    done
    peer=${peer:-$i}
    timeout=${RABBITMQ_NODE_START_TIMEOUT:-60}
    deadline=$(($(date +%s) + timeout))
    while :; do
        seen=$(running_nodes "$peer") || seen=
        grep -qxF "$node" <<<"$seen" && break
        (($(date +%s) < deadline)) ||
            die "node $i ($node) accepts AMQP but node $peer does not count it running after ${timeout}s"
        sleep 0.3
    done
    log "node $i ($node) is back in the cluster (seen running by node $peer) after $(since "$t0")s"
    printf '%s\n' "$url"
}

main() {
    (($# >= 2)) || usage
    local cmd=$1 i
    DIR=$2
    shift 2
    case "$cmd" in
    start)
        (($# <= 1)) || usage
        cmd_start "${1:-3}"
        ;;
    stop)
        (($# == 0)) || usage
        cmd_stop
        ;;
    urls)
        (($# == 0)) || usage
        load_cluster
        urls
        ;;
    nodes)
        (($# == 0)) || usage
        load_cluster
        for ((i = 1; i <= N; i++)); do field "$i" NODE; done
        ;;
    kill)
        (($# == 1)) || usage
        load_cluster
        check_index "$1"
        "$NODE_SCRIPT" kill "$(node_dir "$1")"
        ;;
    restart)
        (($# == 1)) || usage
        load_cluster
        check_index "$1"
        cmd_restart "$1"
        ;;
    ctl)
        (($# >= 1)) || usage
        load_cluster
        check_index "$1"
        i=$1
        shift
        exec "$NODE_SCRIPT" ctl "$(node_dir "$i")" "$@"
        ;;
    *) usage ;;
    esac
}

main "$@"
