# shellcheck shell=bash
# Brings up Postgres and Redis for the demo and the tests, sourced by scripts/demo, scripts/test
# and scripts/sqlx-prepare.
#
# If DATABASE_URL / REDIS_URL (or the default local ports) answer, they are used as they are.
# Otherwise throwaway instances are started on free ports under .data/ in the project, after
# installing the servers with apt-get when they are missing. Running it again reuses them.
# It exports DATABASE_URL and REDIS_URL.

BACKROOM_ROOT=${BACKROOM_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
DATA_DIR="$BACKROOM_ROOT/.data"

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }

# Runs a command as root (directly, or through sudo).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=""
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    say "cannot install $* automatically: no apt-get here. Install it and run again." && return 1
  fi
  if [ -z "$APT_UPDATED" ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && APT_UPDATED=1
  fi
  say "installing $* with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# True when something accepts TCP connections on host:port.
port_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

free_port() {
  local port=$1
  while port_open 127.0.0.1 "$port"; do port=$((port + 1)); done
  echo "$port"
}

# host and port of a URL such as postgres://user@host:5432/db
url_host() { local rest=${1#*://}; rest=${rest#*@}; rest=${rest%%/*}; echo "${rest%%:*}"; }
url_port() {
  local rest=${1#*://}; rest=${rest#*@}; rest=${rest%%/*}
  if [[ $rest == *:* ]]; then echo "${rest##*:}"; else echo "$2"; fi
}

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && echo "$dir"
}

ensure_postgres() {
  export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/backroom}
  command -v psql >/dev/null 2>&1 || apt_install postgresql-client
  local host port
  host=$(url_host "$DATABASE_URL"); port=$(url_port "$DATABASE_URL" 5432)
  if ! port_open "$host" "$port"; then
    start_local_postgres
  fi
  # Make sure the database itself exists.
  local db=${DATABASE_URL##*/}; db=${db%%\?*}
  local server=${DATABASE_URL%/*}/postgres
  if ! psql "$server" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
    psql "$server" -qc "CREATE DATABASE \"$db\"" >/dev/null
  fi
  say "Postgres: $DATABASE_URL"
}

start_local_postgres() {
  local bin port dir="$DATA_DIR/postgres" runner=()
  bin=$(pg_bin) || true
  if [ -z "$bin" ]; then apt_install postgresql; bin=$(pg_bin); fi
  # Postgres refuses to run as root: run it as the 'postgres' user the package created.
  if [ "$(id -u)" -eq 0 ]; then runner=(runuser -u postgres --); fi
  mkdir -p "$DATA_DIR"
  if [ -f "$dir/postmaster.pid" ] && [ -f "$DATA_DIR/postgres.port" ] \
     && port_open 127.0.0.1 "$(cat "$DATA_DIR/postgres.port")"; then
    port=$(cat "$DATA_DIR/postgres.port")
  else
    port=$(free_port 55432)
    if [ ! -f "$dir/PG_VERSION" ]; then
      say "creating a throwaway Postgres cluster in $dir"
      mkdir -p "$dir"
      [ ${#runner[@]} -gt 0 ] && chown postgres "$dir"
      "${runner[@]}" "$bin/initdb" -D "$dir" -U postgres -A trust -E UTF8 >/dev/null
    fi
    say "starting Postgres on 127.0.0.1:$port"
    "${runner[@]}" "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
    echo "$port" > "$DATA_DIR/postgres.port"
  fi
  local db=${DATABASE_URL##*/}
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/$db"
}

ensure_redis() {
  export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
  local host port
  host=$(url_host "$REDIS_URL"); port=$(url_port "$REDIS_URL" 6379)
  if ! port_open "$host" "$port"; then
    start_local_redis
  fi
  say "Redis: $REDIS_URL"
}

start_local_redis() {
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  local port dir="$DATA_DIR/redis"
  mkdir -p "$dir"
  if [ -f "$DATA_DIR/redis.port" ] && port_open 127.0.0.1 "$(cat "$DATA_DIR/redis.port")"; then
    port=$(cat "$DATA_DIR/redis.port")
  else
    port=$(free_port 56379)
    say "starting Redis on 127.0.0.1:$port"
    redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$dir" \
      --appendonly yes --save "" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" >/dev/null
    for _ in $(seq 1 50); do port_open 127.0.0.1 "$port" && break; sleep 0.1; done
    echo "$port" > "$DATA_DIR/redis.port"
  fi
  export REDIS_URL="redis://127.0.0.1:$port"
}

# An SMTP server for the demo when SMTP_URL is not set: scripts/smtp-sink.py keeps every
# message as a file under .data/mail/.
ensure_smtp() {
  if [ -n "${SMTP_URL:-}" ]; then say "SMTP: $SMTP_URL"; return; fi
  /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || apt_install python3-aiosmtpd
  local port
  if [ -f "$DATA_DIR/smtp.port" ] && port_open 127.0.0.1 "$(cat "$DATA_DIR/smtp.port")"; then
    port=$(cat "$DATA_DIR/smtp.port")
  else
    port=$(free_port 52525)
    mkdir -p "$DATA_DIR/mail"
    nohup /usr/bin/python3 "$BACKROOM_ROOT/scripts/smtp-sink.py" --port "$port" --dir "$DATA_DIR/mail" \
      >"$DATA_DIR/smtp.log" 2>&1 &
    for _ in $(seq 1 50); do port_open 127.0.0.1 "$port" && break; sleep 0.1; done
    echo "$port" > "$DATA_DIR/smtp.port"
  fi
  export SMTP_URL="smtp://127.0.0.1:$port"
  say "SMTP: $SMTP_URL (messages are kept in .data/mail/)"
}

# Tools the test suite drives as real processes: a private redis-server, an SMTP server
# (aiosmtpd), poppler/qpdf to read and check invoice PDFs, and Chromium with its WebDriver
# for the dashboard's browser tests.
ensure_test_tools() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || missing+=(python3-aiosmtpd)
  command -v pdftotext >/dev/null 2>&1 || missing+=(poppler-utils)
  command -v qpdf >/dev/null 2>&1 || missing+=(qpdf)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  # The operations kit's tests: a real Prometheus, and promtool for the alert rules.
  command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}
