#!/usr/bin/env bash
# Local set-up for a fresh machine: makes sure RabbitMQ, Redis and PostgreSQL answer on localhost
# (starting them, or installing them from the system's packages when absent), then runs the demo
# or the whole test suite.
#
#   deploy/dev.sh demo [--scale N]   the demo: a campaign-sized burst through the simulator
#   deploy/dev.sh test [ARGS]        every unit and integration test (ARGS go to cargo test)
#   deploy/dev.sh services           only make sure the services are running
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
APT_UPDATED=""

say() { printf '\033[1m%s\033[0m\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 tries=${2:-60}
  for _ in $(seq 1 "$tries"); do
    port_open "$port" && return 0
    sleep 1
  done
  echo "nothing answers on 127.0.0.1:$port after ${tries}s" >&2
  return 1
}

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "please install $* with your system's package manager" >&2
    exit 1
  fi
  if [ -z "$APT_UPDATED" ]; then
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  say "installing $* from the system's packages"
  # Package scripts try to start services through systemd, which may be absent; we start them below.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null || true
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || { echo "could not install $pkg" >&2; exit 1; }
  done
}

ensure_postgres() {
  port_open 5432 && return 0
  local fresh=""
  if ! ls -d /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
    fresh=1
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ -n "$fresh" ]; then
    # A database installed just for pregon's development and CI: trust connections from this host.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$hba"
  fi
  say "starting PostgreSQL $version"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
    || $SUDO pg_ctlcluster "$version" main start
  wait_port 5432 60
}

ensure_redis() {
  port_open 6379 && return 0
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  say "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/pregon-redis.log
  wait_port 6379 30
}

ensure_rabbitmq() {
  port_open 5672 && return 0
  command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || apt_install rabbitmq-server
  say "starting RabbitMQ"
  $SUDO rabbitmq-server -detached
  wait_port 5672 120
  $SUDO rabbitmqctl await_startup >/dev/null 2>&1 || true
}

ensure_toolchain() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "pregon needs a Rust toolchain (1.88 or newer) with cargo: see https://rustup.rs" >&2
    exit 1
  fi
}

# schemathesis (from PyPI), which the contract test runs against a live API: installed once into
# a virtual environment outside the clone, pinned so every run attacks the API the same way.
SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis() {
  local venv="${PREGON_TOOLS_DIR:-$HOME/.cache/pregon-tools}/schemathesis-$SCHEMATHESIS_VERSION"
  if [ ! -x "$venv/bin/schemathesis" ]; then
    command -v python3 >/dev/null 2>&1 || apt_install python3
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
      apt_install python3-venv
    fi
    say "installing schemathesis $SCHEMATHESIS_VERSION from PyPI"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  fi
  # Not a PREGON_ name: pregon refuses settings it does not know, and the tests start pregon.
  export SCHEMATHESIS_BIN="$venv/bin/schemathesis"
}

# Prometheus and promtool, from the system's packages: the alert rules' unit tests and the test
# that evaluates every dashboard query against a real Prometheus need them.
ensure_prometheus() {
  if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    apt_install prometheus
  fi
  # The package's own service is not wanted: each test starts a Prometheus of its own.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
}

# The console's tests drive a real Chromium through chromedriver, both from the system's packages.
ensure_chromium() {
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    apt_install chromium chromium-driver
  fi
}

# The deployment files are checked by the tools their platforms use, from PyPI and pinned:
# docker-compose parses the compose file, kubernetes-validate checks the manifests against the
# Kubernetes schemas. docker-compose 1.29 needs a PyYAML 5 that only builds with Cython < 3.
COMPOSE_VERSION=1.29.2
KUBERNETES_VALIDATE_VERSION=1.37.0
validate_deploy() {
  local tools="${PREGON_TOOLS_DIR:-$HOME/.cache/pregon-tools}"
  local compose="$tools/docker-compose-$COMPOSE_VERSION"
  local kube="$tools/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
  if [ ! -x "$compose/bin/docker-compose" ]; then
    say "installing docker-compose $COMPOSE_VERSION (a parser for the compose file) from PyPI"
    rm -rf "$compose"
    python3 -m venv "$compose"
    "$compose/bin/pip" install --quiet --disable-pip-version-check "cython<3" wheel
    "$compose/bin/pip" install --quiet --disable-pip-version-check --no-build-isolation "PyYAML==5.4.1"
    "$compose/bin/pip" install --quiet --disable-pip-version-check "docker-compose==$COMPOSE_VERSION"
  fi
  if [ ! -x "$kube/bin/kubernetes-validate" ]; then
    say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION from PyPI"
    rm -rf "$kube"
    python3 -m venv "$kube"
    "$kube/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  fi
  "$compose/bin/docker-compose" -f deploy/compose/compose.yml config --quiet
  "$kube/bin/kubernetes-validate" --strict --quiet deploy/k8s/*.yaml
  say "deploy/compose and deploy/k8s are valid"
}

# The dashboards are checked against Grafana's own dashboard schema as the Grafana Foundation SDK
# (PyPI, pinned; its models are generated from Grafana's schemas) reads them.
GRAFANA_SDK_VERSION='1769699998!10.1.0'
validate_dashboards() {
  local venv="${PREGON_TOOLS_DIR:-$HOME/.cache/pregon-tools}/grafana-foundation-sdk-${GRAFANA_SDK_VERSION#*!}"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import grafana_foundation_sdk' 2>/dev/null; then
    say "installing grafana-foundation-sdk ${GRAFANA_SDK_VERSION#*!} from PyPI"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "grafana-foundation-sdk==$GRAFANA_SDK_VERSION"
  fi
  python3 dashboards/generate.py --check
  "$venv/bin/python" dashboards/validate.py dashboards/*.json
}

ensure_services() {
  ensure_postgres
  ensure_redis
  ensure_rabbitmq
}

command=${1:-}
shift || true
case "$command" in
  services)
    ensure_services
    say "RabbitMQ, Redis and PostgreSQL are running"
    ;;
  demo)
    ensure_toolchain
    ensure_services
    cargo run --quiet --bin pregon -- demo "$@"
    ;;
  test)
    ensure_toolchain
    ensure_services
    ensure_schemathesis
    ensure_prometheus
    ensure_chromium
    deploy/prometheus/check.sh
    validate_dashboards
    python3 deploy/snapshot.py --check-panels
    validate_deploy
    cargo test --all-features "$@"
    ;;
  snapshot)
    # A picture of the key panels (dashboards/snapshot.png), from a real Prometheus scraping
    # the traffic of the observability test.
    ensure_toolchain
    ensure_services
    ensure_prometheus
    venv="${PREGON_TOOLS_DIR:-$HOME/.cache/pregon-tools}/snapshot"
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
      say "installing matplotlib from PyPI"
      python3 -m venv "$venv"
      "$venv/bin/pip" install --quiet --disable-pip-version-check "matplotlib==3.9.2"
    fi
    SNAPSHOT_PNG="$PWD/dashboards/snapshot.png" SNAPSHOT_PYTHON="$venv/bin/python" \
      cargo test --test it observability "$@"
    say "wrote dashboards/snapshot.png"
    ;;
  screenshots)
    # Pictures of the console's main pages (src/console/screenshots/*.png), taken by its browser test.
    ensure_toolchain
    ensure_services
    ensure_chromium
    CONSOLE_SCREENSHOTS="$PWD/src/console/screenshots" cargo test --test it console::a_campaign "$@"
    say "wrote src/console/screenshots/*.png"
    ;;
  *)
    echo "usage: deploy/dev.sh demo|test|services|snapshot|screenshots" >&2
    exit 2
    ;;
esac
