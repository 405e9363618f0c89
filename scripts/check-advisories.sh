#!/usr/bin/env bash
# Checks the dependencies in Cargo.lock and fuzz/Cargo.lock against the
# RustSec advisory database (`cargo deny check advisories`, policy in
# deny.toml). Part of the test command (scripts/test.sh); runs alone too:
#
#   scripts/check-advisories.sh
#
# Which database, in this order, and it says which one it used and the date of
# its newest commit:
#
#   1. A fresh one, where the machine reaches GitHub: cargo-deny fetches
#      https://github.com/RustSec/advisory-db into .tools/advisory-dbs (the
#      project's directory, not $CARGO_HOME). A `git ls-remote` with a 10 s
#      limit tries first, so a machine without access to GitHub falls through
#      in seconds instead of hanging; the fetch itself gets 5 minutes.
#   2. Otherwise a snapshot: ADVISORY_DB_SNAPSHOT, by default
#      ../shared/rustsec-advisory-db.tar.gz beside the repository, or beside
#      the repository this one was cloned from when that is a local directory
#      (so a fresh `git clone /work/main /tmp/check` finds it too). It is a
#      tar.gz of a git clone of advisory-db (one top directory holding .git and
#      crates/), extracted into a temporary directory for the check. Advisories
#      published after its newest commit are not checked: the date is printed,
#      with a warning once it is older than cargo-deny's 90 days.
#   3. Otherwise the check is skipped with a loud warning saying so (the
#      test command still runs everything else): a machine with neither
#      GitHub nor the snapshot cannot check advisories at all. Set
#      ADVISORY_DB_REQUIRED=1 to make that a failure (release pipelines).
#
# Environment:
#   ADVISORY_DB_SNAPSHOT  the snapshot to use when no fresh database can be
#                         fetched (default: ../shared/rustsec-advisory-db.tar.gz
#                         beside the repository)
#   ADVISORY_DB_FETCH=0   do not try to fetch; use the snapshot
#   ADVISORY_DB_REQUIRED=1  when neither a fetch nor a snapshot is possible,
#                         fail instead of warning
#
# Needs: cargo-deny (scripts/test.sh installs 0.20.2), git, tar.
set -euo pipefail

# A relative ADVISORY_DB_SNAPSHOT is relative to where the script is run from.
SNAPSHOT=${ADVISORY_DB_SNAPSHOT:-}
[[ -z "$SNAPSHOT" || "$SNAPSHOT" == /* ]] || SNAPSHOT=$PWD/$SNAPSHOT

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd -P)
SNAPSHOT_NAME=shared/rustsec-advisory-db.tar.gz
if [[ -z "$SNAPSHOT" ]]; then
    SNAPSHOT=$ROOT/../$SNAPSHOT_NAME
    origin=$(git remote get-url origin 2>/dev/null || true)
    origin=${origin#file://}
    if [[ ! -f "$SNAPSHOT" && "$origin" == /* && -d "$origin" ]]; then
        SNAPSHOT=$(cd "$origin/.." && pwd -P)/$SNAPSHOT_NAME
    fi
fi

die() {
    printf 'check-advisories.sh: error: %s\n' "$*" >&2
    exit 1
}
warn() { printf 'check-advisories.sh: warning: %s\n' "$*" >&2; }

DB_URL=https://github.com/RustSec/advisory-db
# The directory cargo-deny 0.20 opens under its db-path for DB_URL: the URL's
# last segment and the XxHash64 (seed 0xca80de71) of the lowercased URL
# (url_to_db_path in cargo-deny's src/advisories/helpers/db.rs). Only the
# snapshot needs it (a fetch makes it itself); if another cargo-deny version
# names it differently, the snapshot check fails naming the directory it
# looked for, and this name needs updating to that one.
DB_DIR_NAME=advisory-db-3157b0e258782691
FRESH_ROOT=$ROOT/.tools/advisory-dbs

command -v git >/dev/null 2>&1 || die "git is needed (cargo-deny reads the advisory database with it)"
cargo deny --version >/dev/null 2>&1 ||
    die "cargo-deny is not installed: cargo install cargo-deny --locked --version 0.20.2"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/amqp-gateway-advisories.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# with_timeout SECONDS CMD...: run CMD, killed after SECONDS where coreutils'
# timeout exists (it kills the whole process group, git's children included).
with_timeout() {
    local seconds=$1
    shift
    if command -v timeout >/dev/null 2>&1; then
        timeout "$seconds" "$@"
    else
        "$@"
    fi
}

# write_config DB_ROOT [STALENESS]: deny.toml with the database root (and, for
# a snapshot, how old a database cargo-deny accepts) set in [advisories], to
# $TMP/deny.toml. deny.toml itself keeps cargo-deny's defaults, so a plain
# `cargo deny check` elsewhere uses $CARGO_HOME as usual.
write_config() {
    local db_root=$1 staleness=${2:-}
    [[ "$db_root" != *"'"* ]] || die "the database path contains a quote: $db_root"
    grep -Eq '^[[:space:]]*(db-path|maximum-db-staleness)[[:space:]]*=' deny.toml &&
        die "deny.toml sets db-path or maximum-db-staleness itself; this script sets them"
    awk -v root="$db_root" -v staleness="$staleness" '
        { print }
        /^\[advisories\][[:space:]]*$/ {
            print "db-path = '\''" root "'\''"
            if (staleness != "") print "maximum-db-staleness = \"" staleness "\""
            found = 1
        }
        END { if (!found) exit 1 }
    ' deny.toml >"$TMP/deny.toml" || die "deny.toml has no [advisories] table"
}

# db_date DIR: the committer date (ISO 8601) of the database's newest commit.
db_date() { git -C "$1" log -1 --format=%cI; }

# check: cargo deny check advisories on the workspace, then on fuzz/ (its own
# workspace and Cargo.lock; the fuzz targets are never shipped, so a fuzz/
# lock that no longer matches its manifest is a warning, not a failure:
# scripts/fuzz.sh refreshes it).
#
# --offline is what keeps cargo-deny from fetching the database itself (0.20
# has no separate switch), and it also makes its `cargo metadata` offline,
# which then needs every crate in Cargo.lock downloaded, for every platform:
# `cargo fetch` does that first.
check() {
    echo "workspace (Cargo.lock):"
    cargo fetch --locked --quiet || die "cargo fetch --locked failed: the check needs every crate in Cargo.lock downloaded"
    cargo deny --offline --workspace --config "$TMP/deny.toml" check advisories
    echo "fuzz/ (fuzz/Cargo.lock):"
    if ! cargo fetch --locked --quiet --manifest-path fuzz/Cargo.toml; then
        warn "fuzz/: cargo fetch --locked failed (fuzz/Cargo.lock out of date? scripts/fuzz.sh refreshes it): fuzz/ advisories not checked"
        return
    fi
    cargo deny --offline --manifest-path fuzz/Cargo.toml --config "$TMP/deny.toml" check advisories
}

# 1. A fresh database.
not_fetched="not fetched (ADVISORY_DB_FETCH=0)"
if [[ "${ADVISORY_DB_FETCH:-1}" != 0 ]]; then
    if with_timeout 10 git ls-remote --exit-code "$DB_URL" HEAD >/dev/null 2>&1; then
        mkdir -p "$FRESH_ROOT"
        write_config "$FRESH_ROOT"
        echo "fetching the RustSec advisory database into $FRESH_ROOT"
        if with_timeout 300 cargo deny --workspace --config "$TMP/deny.toml" fetch db; then
            date=$(db_date "$FRESH_ROOT/$DB_DIR_NAME" 2>/dev/null) || date="unknown: no $DB_DIR_NAME"
            echo "advisories: checking against a freshly fetched database ($DB_URL, newest commit $date)"
            check
            exit 0
        fi
        not_fetched="fetching $DB_URL failed"
        warn "$not_fetched"
    else
        not_fetched="$DB_URL is not reachable from here"
        echo "$not_fetched (git ls-remote, 10 s limit): not fetching"
    fi
fi

# 2. The snapshot.
if [[ -f "$SNAPSHOT" ]]; then
    mkdir -p "$TMP/extract" "$TMP/dbs"
    tar -xzf "$SNAPSHOT" -C "$TMP/extract" || die "cannot extract the advisory database snapshot $SNAPSHOT"
    top=("$TMP"/extract/*)
    [[ ${#top[@]} == 1 && -d "${top[0]}/.git" && -d "${top[0]}/crates" ]] ||
        die "$SNAPSHOT is not a tar.gz of one advisory-db git clone (one directory with .git and crates/)"
    db=$TMP/dbs/$DB_DIR_NAME
    mv "${top[0]}" "$db"
    date=$(db_date "$db") || die "$SNAPSHOT: git cannot read the snapshot's newest commit"
    age_days=$((($(date +%s) - $(git -C "$db" log -1 --format=%ct)) / 86400))
    ((age_days >= 0)) || age_days=0 # a clock behind the snapshot's
    # cargo-deny judges freshness by when the clone was last fetched; what the
    # snapshot covers is set by its newest commit, so that is what is shown,
    # and the snapshot is accepted whatever its age (one day of margin).
    write_config "$TMP/dbs" "P$((age_days + 1))D"
    echo "advisories: checking against the snapshot $SNAPSHOT (newest commit $date, $age_days days old)"
    if ((age_days > 90)); then
        warn "the advisory database snapshot is $age_days days old: advisories published since $date are not checked"
    fi
    check
    exit 0
fi

# 3. Neither.
msg="no advisory database: $not_fetched, and there is no snapshot at $SNAPSHOT"
if [[ "${ADVISORY_DB_REQUIRED:-0}" == 1 ]]; then
    die "$msg (ADVISORY_DB_REQUIRED=1).
  Set ADVISORY_DB_SNAPSHOT to a tar.gz of an advisory-db git clone."
fi
warn "$msg.
  Dependency advisories are NOT checked. Set ADVISORY_DB_SNAPSHOT to a tar.gz of an
  advisory-db git clone, or run where github.com is reachable."
