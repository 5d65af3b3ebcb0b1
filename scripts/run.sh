#!/usr/bin/env bash
# Run gpuyard on this machine: scripts/run.sh [gpuyard up options...]
# Sets up .venv, makes sure a RabbitMQ is running or installed (`gpuyard up` starts a private one on its
# own port when none answers on 127.0.0.1:5672), then hands over to `gpuyard up`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive

say() { printf 'gpuyard: %s\n' "$*"; }
die() { printf 'gpuyard: error: %s\n' "$*" >&2; exit 1; }

bash scripts/bootstrap.sh examples

broker_state=$(.venv/bin/python -c '
from gpuyard.adapters.broker.local import amqp_reachable, find_rabbitmq_server
if amqp_reachable("amqp://guest:guest@127.0.0.1:5672/"):
    print("running")
else:
    print("installed" if find_rabbitmq_server() else "missing")')

if [[ "$broker_state" == missing ]]; then
    why="no RabbitMQ answers on 127.0.0.1:5672 and rabbitmq-server is not installed"
    if [[ $(id -u) -ne 0 ]]; then
        die "$why. Install it with:
    sudo apt-get update && sudo apt-get install -y rabbitmq-server
  then run this again."
    fi
    command -v apt-get >/dev/null 2>&1 || die "$why, and this is not a Debian/Ubuntu system: install RabbitMQ yourself"
    say "$why: installing rabbitmq-server with apt-get (a minute or two)"
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends rabbitmq-server </dev/null || die "apt-get install -y rabbitmq-server failed"
fi

exec .venv/bin/gpuyard up "$@"
