# Shared by scripts/up and scripts/test: install what is missing, start what is not
# running. Sourced, not run. Everything slow is cached outside the work tree:
#   PAYGATE_TOOLS_DIR (default ~/.local/share/paygate)  the tansu broker, demo state
#   CARGO_TARGET_DIR  (default ~/.cache/paygate/target)  the build

set -euo pipefail

PAYGATE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PAYGATE_TOOLS_DIR="${PAYGATE_TOOLS_DIR:-$HOME/.local/share/paygate}"
TANSU_VERSION="0.6.0"
TANSU="$PAYGATE_TOOLS_DIR/tansu-$TANSU_VERSION/bin/tansu"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/paygate/target}"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=""
apt_install() {
    command -v apt-get >/dev/null || die "cannot install $* without apt-get; install it by hand"
    if [ -z "$APT_UPDATED" ]; then
        log "apt-get update"
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    log "installing $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Build tools: a C toolchain and make for librdkafka, protoc for the event schemas.
ensure_build_tools() {
    local missing=()
    command -v cargo >/dev/null || die "cargo is missing: install Rust (rustup) first"
    command -v cc >/dev/null || missing+=(build-essential)
    command -v make >/dev/null || missing+=(make)
    command -v protoc >/dev/null || missing+=(protobuf-compiler)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    [ -e /usr/include/zlib.h ] || missing+=(zlib1g-dev)
    # librdkafka's TLS and SASL to the brokers (rdkafka's `ssl` feature) link OpenSSL.
    [ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
    command -v curl >/dev/null || missing+=(curl)
    command -v python3 >/dev/null || missing+=(python3)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# The official Standard Webhooks library (PyPI), which the tests ask whether Paygate's
# webhook signatures verify; in a venv of its own under the tools directory.
STANDARDWEBHOOKS_VERSION="1.1.0"
ensure_webhook_verifier() {
    local venv="$PAYGATE_TOOLS_DIR/standardwebhooks-$STANDARDWEBHOOKS_VERSION"
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import standardwebhooks' 2>/dev/null; then
        log "installing standardwebhooks $STANDARDWEBHOOKS_VERSION into $venv (once)"
        python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
        "$venv/bin/python" -m pip install --quiet "standardwebhooks==$STANDARDWEBHOOKS_VERSION"
    fi
    export PAYGATE_TEST_PYTHON="$venv/bin/python"
}

# cargo-deny (licenses, bans and sources of every dependency), built once from crates.io
# into the tools directory.
CARGO_DENY_VERSION="0.20.2"
CARGO_DENY="$PAYGATE_TOOLS_DIR/cargo-deny-$CARGO_DENY_VERSION/bin/cargo-deny"
ensure_cargo_deny() {
    if [ -x "$CARGO_DENY" ]; then return; fi
    log "building cargo-deny $CARGO_DENY_VERSION (once; about 8 minutes on 2 cores)"
    cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked \
        --root "$PAYGATE_TOOLS_DIR/cargo-deny-$CARGO_DENY_VERSION" --quiet
}

# mdBook, which builds the book under docs/, built once from crates.io into the tools
# directory (without its `serve` and `watch` features, which the checks do not use).
MDBOOK_VERSION="0.5.4"
MDBOOK="$PAYGATE_TOOLS_DIR/mdbook-$MDBOOK_VERSION/bin/mdbook"
ensure_mdbook() {
    if [ -x "$MDBOOK" ]; then return; fi
    log "building mdbook $MDBOOK_VERSION (once; a few minutes on 2 cores)"
    cargo install mdbook --version "$MDBOOK_VERSION" --locked --no-default-features \
        --features search --root "$PAYGATE_TOOLS_DIR/mdbook-$MDBOOK_VERSION" --quiet
}

# Builds the book into <dir> and checks every internal link and every command in it
# and in the README against the code (scripts/check-docs, which first proves it
# catches planted mistakes).
check_book() { # dir
    ensure_mdbook
    "$MDBOOK" build "$PAYGATE_ROOT/docs" --dest-dir "$1" || die "mdbook could not build the book (docs/)"
    "$PAYGATE_ROOT/scripts/check-docs" --self-test
    "$PAYGATE_ROOT/scripts/check-docs" "$1"
}

# The Kafka-protocol broker, built once from crates.io into the tools directory.
ensure_tansu() {
    if [ -x "$TANSU" ]; then return; fi
    log "building the tansu $TANSU_VERSION broker (once; about 11 minutes on 2 cores)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
        --root "$PAYGATE_TOOLS_DIR/tansu-$TANSU_VERSION" --quiet
}

PG_STARTED=""
ensure_postgres() {
    if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then return; fi
    if ! command -v pg_ctlcluster >/dev/null; then apt_install postgresql; fi
    local version
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    [ -n "$version" ] || die "PostgreSQL is installed but has no cluster"
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    PG_STARTED="$version"
    for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
    pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL did not start"
    # Paygate connects as postgres over TCP; a fresh Debian install wants a password.
    if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
        log "allowing local trust authentication for PostgreSQL"
        local hba="/etc/postgresql/$version/main/pg_hba.conf"
        as_root sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/; s/^(host\s+all\s+all\s+::1\/128\s+)\S+/\1trust/' "$hba"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    fi
}

REDIS_STARTED=""
ensure_redis() {
    if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return; fi
    if ! command -v redis-server >/dev/null; then apt_install redis-server; fi
    log "starting Redis"
    mkdir -p "$PAYGATE_TOOLS_DIR/redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir "$PAYGATE_TOOLS_DIR/redis" --logfile "$PAYGATE_TOOLS_DIR/redis/redis.log"
    REDIS_STARTED=1
    for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || die "Redis did not start"
}

# A free TCP port on loopback.
# Whether something accepts connections on 127.0.0.1:<port>.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_for_port() { # port what [seconds]
    local port="$1" what="$2" seconds="${3:-30}"
    for _ in $(seq 1 $((seconds * 10))); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "$what did not open port $port within ${seconds}s"
}

# Starts a broker on 127.0.0.1:<port> with durable sqlite storage in <dir>; prints its pid.
start_broker() { # port dir
    local port="$1" dir="$2"
    mkdir -p "$dir"
    # tansu resolves sqlite:// relative to its working directory.
    (cd "$dir" && exec setsid "$TANSU" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "sqlite://tansu.db" >broker.log 2>&1) &
    echo $!
    wait_for_port "$port" "the tansu broker"
    index_broker "$dir/tansu.db"
}

# tansu 0.6.0's sqlite storage lacks two indexes its fetches need (scripts/tansu-index
# says which and why); adds them once tansu has created its schema. Idempotent.
index_broker() { # path to tansu.db
    "$PAYGATE_ROOT/scripts/tansu-index" "$1" 60 || die "could not index the broker's storage $1"
}

# Stops a session (a pid started with setsid) politely, waits until every member
# is gone, and kills what is left after 15 s.
stop_group() { # pid
    local pid="$1"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    # Done when no live member is left (exited members may linger as zombies until
    # whoever adopted them reaps them).
    for _ in $(seq 1 75); do
        ps -o stat= --sid "$pid" 2>/dev/null | grep -qv '^Z' || return 0
        sleep 0.2
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}

# The console's browser test: Debian's Chromium and its driver, and Selenium from PyPI
# in a virtualenv of its own under the tools directory (pinned; installed once).
SELENIUM_VERSION="4.38.0"
SELENIUM_VENV="$PAYGATE_TOOLS_DIR/selenium-venv"
browser_installed() {
    command -v chromium >/dev/null && command -v chromedriver >/dev/null
}
ensure_browser() {
    browser_installed || apt_install chromium chromium-driver
}
ensure_selenium() {
    local installed
    installed="$("$SELENIUM_VENV/bin/python" -c 'import selenium; print(selenium.__version__)' 2>/dev/null || true)"
    if [ "$installed" != "$SELENIUM_VERSION" ]; then
        log "installing selenium $SELENIUM_VERSION into $SELENIUM_VENV (once)"
        python3 -m venv "$SELENIUM_VENV" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$SELENIUM_VENV"; }
        "$SELENIUM_VENV/bin/python" -m pip install --quiet "selenium==$SELENIUM_VERSION"
    fi
}

# Every test marked #[ignore] and why (its reason), for the end of a run: nothing is
# left out without saying so.
list_ignored() {
    python3 - "$PAYGATE_ROOT" <<'PY'
import pathlib, re, sys
root = pathlib.Path(sys.argv[1])
for path in sorted(root.glob("*/**/*.rs")):
    if "target" in path.parts:
        continue
    text = path.read_text(errors="replace")
    for m in re.finditer(r'#\[ignore\s*=\s*"([^"]*)"\]\s*(?:#\[[^\]]*\]\s*)*(?:pub\s+)?(?:async\s+)?fn\s+(\w+)', text):
        print(f"  {m.group(2)} ({path.relative_to(root)}): {m.group(1)}")
PY
}

