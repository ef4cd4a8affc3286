# Shared shell functions of scripts/bootstrap, scripts/test and scripts/demo. Source it; do not run it.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT

# The scripts build once, on a fresh machine or in CI: incremental artifacts would only double target/ on disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# The real binary of a Foundry tool installed by `npm ci`. node_modules/.bin/<tool> is a Node wrapper that spawns
# the binary as a child; a daemon we stop must be the binary itself, or stopping the wrapper orphans it.
foundry_bin() {
  local tool="$1" platform
  case "$(uname -s)/$(uname -m)" in
    Linux/x86_64) platform=linux-amd64 ;;
    Linux/aarch64) platform=linux-arm64 ;;
    Darwin/x86_64) platform=darwin-amd64 ;;
    Darwin/arm64) platform=darwin-arm64 ;;
    *) die "no Foundry npm package for $(uname -s)/$(uname -m)" ;;
  esac
  local bin="$ROOT/node_modules/@foundry-rs/$tool-$platform/bin/$tool"
  [ -x "$bin" ] || die "$tool not found at $bin; run scripts/bootstrap"
  printf '%s\n' "$bin"
}

# The directory with the Postgres server binaries (initdb, postgres, pg_isready), by the same rule as the Rust
# harness: $PG_BIN, else the first directory on PATH with all three, else the newest /usr/lib/postgresql/*/bin.
pg_bin_dir() {
  local dir
  has_server() { [ -x "$1/initdb" ] && [ -x "$1/postgres" ] && [ -x "$1/pg_isready" ]; }
  if [ -n "${PG_BIN:-}" ]; then
    has_server "$PG_BIN" && { printf '%s\n' "$PG_BIN"; return 0; }
    return 1
  fi
  local IFS=:
  for dir in $PATH; do has_server "$dir" && { printf '%s\n' "$dir"; return 0; }; done
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
    has_server "$dir" && { printf '%s\n' "$dir"; return 0; }
  done
  return 1
}

# Where cargo puts what it builds: target/ unless CARGO_TARGET_DIR (or a cargo config) says otherwise.
cargo_target_dir() {
  cargo metadata --no-deps --format-version 1 | node -p 'JSON.parse(require("fs").readFileSync(0)).target_directory'
}

# A TCP port that was free a moment ago.
free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# Runs a command as the owner of the throwaway Postgres: `postgres` when we are root (Postgres refuses root), then
# from /, because that user may not be able to enter the caller's directory (give it absolute paths).
as_pg_owner() {
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# Waits until `curl`-less JSON-RPC answers on $1 (a URL), up to 30 s.
wait_for_rpc() {
  local url="$1" i
  for i in $(seq 1 300); do
    if "$(foundry_bin cast)" chain-id --rpc-url "$url" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}
