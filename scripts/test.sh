#!/usr/bin/env bash
# Run the test suite: scripts/test.sh [pytest args...]   e.g. scripts/test.sh tests/unit -k queue
# Sets up .venv, makes sure RabbitMQ and PostgreSQL are available for the integration tests (a running
# service, or the binaries the test fixtures need to start private ones), then runs pytest.
# GPUYARD_TEST_AMQP_URL / GPUYARD_TEST_PG_URL point the tests at servers of your own instead.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive

say() { printf 'gpuyard: %s\n' "$*"; }
die() { printf 'gpuyard: error: %s\n' "$*" >&2; exit 1; }

bash scripts/bootstrap.sh test examples
PY=.venv/bin/python

# Installs Debian packages as root; otherwise says what to install and stops.
apt_install() {
    local why="$1"
    shift
    if [[ $(id -u) -ne 0 ]]; then
        local servers=""
        [[ "$*" == chromium ]] || servers="
  (or set GPUYARD_TEST_AMQP_URL / GPUYARD_TEST_PG_URL to servers you have)"
        die "$why. Install it with:
    sudo apt-get update && sudo apt-get install -y $*$servers, then run this again."
    fi
    command -v apt-get >/dev/null 2>&1 || die "$why, and this is not a Debian/Ubuntu system: install $* yourself"
    say "$why: installing $* with apt-get (a minute or two)"
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "$@" </dev/null || die "apt-get install -y $* failed"
}

if [[ -z "${GPUYARD_TEST_AMQP_URL:-}" ]]; then
    broker_state=$("$PY" -c '
from gpuyard.adapters.broker.local import amqp_reachable, find_rabbitmq_server
if amqp_reachable("amqp://guest:guest@127.0.0.1:5672/"):
    print("running")
else:
    print("installed" if find_rabbitmq_server() else "missing")')
    if [[ "$broker_state" == missing ]]; then
        apt_install "no RabbitMQ answers on 127.0.0.1:5672 and rabbitmq-server is not installed" rabbitmq-server
    fi
fi

if [[ -z "${GPUYARD_TEST_PG_URL:-}" ]]; then
    postgres_state=$("$PY" -c '
from tests.support.postgres import find_pg_bindir, postgres_accepts
if postgres_accepts("postgresql://postgres@127.0.0.1:5432/postgres"):
    print("running")
else:
    print("installed" if find_pg_bindir() else "missing")')
    if [[ "$postgres_state" == missing ]]; then
        apt_install "no PostgreSQL lets user postgres in on 127.0.0.1:5432 and initdb/pg_ctl are not installed" \
            postgresql
    fi
fi

# The browser test of the web UI drives Debian's Chromium (Playwright's own browser download is not used).
if [[ ! -x /usr/bin/chromium ]]; then
    apt_install "the web UI's browser test needs Chromium at /usr/bin/chromium" chromium
fi

if [[ $# -eq 0 ]]; then
    say "static checks: ruff, mypy --strict"
    "$PY" -m ruff check src tests bench examples || die "ruff found problems (see above)"
    "$PY" -m mypy || die "mypy found type errors (see above)"
fi

status=0
"$PY" -m pytest -q -p no:cacheprovider -x --durations=15 "${@:-tests}" || status=$?
if [[ $status -eq 5 ]]; then
    say "pytest collected no tests: that counts as a failure"
fi
exit "$status"
