#!/usr/bin/env bash
# Fuzzes the gateway's parsing of untrusted input with cargo-fuzz (libFuzzer):
# every target in fuzz/ for FUZZ_SECONDS each, and fails if any finds a crash.
#
#   scripts/fuzz.sh                      # every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh     # longer
#   scripts/fuzz.sh reply_decoding       # one target
#
# Targets (fuzz/fuzz_targets/):
#   reply_decoding       bytes -> AMQP field table (lapin's own parser) ->
#                        wire::decode_status / application_headers / decode_deadline
#   request_validation   route + headers -> gateway::validate::{route,headers};
#                        bytes as grpc-timeout -> gateway::call::parse_grpc_timeout
#
# One target by hand, from fuzz/ (what this script runs):
#   cd fuzz && cargo fuzz run --sanitizer none --target-dir target/none reply_decoding -- -max_total_time=60
#
# Where things land (all ignored by git, fuzz/.gitignore):
#   fuzz/corpus/TARGET/      the corpus, kept and grown across runs
#   fuzz/artifacts/TARGET/   crash-*, oom-*, timeout-*, leak-* inputs that failed
#   fuzz/target/logs/TARGET.log   the last run's libFuzzer output
# Replay a crash (prints the panic and its backtrace):
#   cd fuzz && cargo fuzz run --sanitizer none --target-dir target/none TARGET artifacts/TARGET/crash-...
# Shrink it: cargo fuzz tmin --sanitizer none --target-dir target/none TARGET artifacts/TARGET/crash-...
#
# Toolchain: only stable Rust is needed. cargo-fuzz's coverage instrumentation
# uses stable -C flags; its default AddressSanitizer needs the unstable
# -Zsanitizer, so by default this runs without a sanitizer (the code fuzzed
# forbids unsafe, and it is about 3x faster: panics, overflow checks and debug
# assertions are what find bugs here). FUZZ_SANITIZER=address turns ASan on,
# on stable, through RUSTC_BOOTSTRAP=1. Each sanitizer builds into its own
# target dir, as changing RUSTFLAGS or RUSTC_BOOTSTRAP rebuilds everything.
# libFuzzer itself is C++, built by libfuzzer-sys: needs a C++ compiler (g++).
#
# Environment:
#   FUZZ_SECONDS     seconds per target (default 60)
#   FUZZ_SANITIZER   none (default) or address
#   FUZZ_ARGS        extra libFuzzer flags, e.g. "-max_len=1024 -jobs=2"
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

SECONDS_EACH=${FUZZ_SECONDS:-60}
SANITIZER=${FUZZ_SANITIZER:-none}
CARGO_FUZZ_VERSION=0.13.2

die() {
    printf 'fuzz.sh: error: %s\n' "$*" >&2
    exit 1
}

[[ "$SECONDS_EACH" =~ ^[1-9][0-9]*$ ]] || die "FUZZ_SECONDS must be a positive number of seconds, not '$SECONDS_EACH'"
case "$SANITIZER" in
    none) ;;
    address) export RUSTC_BOOTSTRAP=1 ;;
    *) die "FUZZ_SANITIZER must be none or address, not '$SANITIZER'" ;;
esac

command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH: install Rust (https://rustup.rs)"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

if (($# > 0)); then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo fuzz list)
fi
((${#TARGETS[@]} > 0)) || die "no fuzz targets found"

FUZZ_FLAGS=(--sanitizer "$SANITIZER" --target-dir "target/$SANITIZER")
mkdir -p target/logs

# Build everything first, so the time budget is spent fuzzing.
echo "==> building ${TARGETS[*]} (sanitizer: $SANITIZER)"
for target in "${TARGETS[@]}"; do
    cargo fuzz build "${FUZZ_FLAGS[@]}" "$target"
done

failed=()
for target in "${TARGETS[@]}"; do
    log="target/logs/$target.log"
    mkdir -p "corpus/$target" "artifacts/$target"
    start="target/logs/$target.start"
    touch "$start"
    echo "==> fuzzing $target for ${SECONDS_EACH}s (log: fuzz/$log)"
    status=0
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    cargo fuzz run "${FUZZ_FLAGS[@]}" "$target" -- -max_total_time="$SECONDS_EACH" ${FUZZ_ARGS:-} >"$log" 2>&1 ||
        status=$?
    mapfile -t found < <(find "artifacts/$target" -type f -newer "$start" | sort)
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)
    echo "    ${done_line:-no DONE line (see the log)}"
    echo "    corpus: $(find "corpus/$target" -type f | wc -l) inputs"
    if ((status != 0 || ${#found[@]} > 0)); then
        failed+=("$target")
        echo "    FAILED (exit $status); failing inputs:" >&2
        if ((${#found[@]} > 0)); then printf '      fuzz/%s\n' "${found[@]}" >&2; else echo "      (none written)" >&2; fi
        grep -E -A 12 "panicked at|ERROR: (libFuzzer|AddressSanitizer)" "$log" | head -n 40 | sed 's/^/      /' >&2 || true
    fi
done

if ((${#failed[@]} > 0)); then
    die "crash found in: ${failed[*]} (inputs in fuzz/artifacts/, logs in fuzz/target/logs/)"
fi
echo "==> no crash in ${TARGETS[*]} (${SECONDS_EACH}s each)"
