#!/usr/bin/env bash
# Set up .venv in the repository root with gpuyard installed editable, plus the extras named as arguments:
#   scripts/bootstrap.sh test examples
# Idempotent: when pyproject.toml and the extras are unchanged since the last install, pip is skipped.
# PYTHON=/path/to/python3.x picks the interpreter; otherwise python3, python3.12, python3.11 are tried.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'gpuyard: %s\n' "$*"; }
die() { printf 'gpuyard: error: %s\n' "$*" >&2; exit 1; }

VENV=.venv
STAMP="$VENV/.gpuyard-stamp"
PIP_LOG="$VENV/.gpuyard-pip.log"

# The extras, sorted and de-duplicated, so "test examples" and "examples test" are the same request.
extras=()
for extra in "$@"; do
    [[ "$extra" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "'$extra' is not an extra's name (see [project.optional-dependencies] in pyproject.toml)"
    extras+=("$extra")
done
extras_csv=""
if ((${#extras[@]})); then
    extras_csv=$(printf '%s\n' "${extras[@]}" | sort -u | paste -sd, -)
fi

python_ok() { # usable interpreter: Python >= 3.11 that can make virtualenvs
    "$1" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

find_python() {
    local candidate
    for candidate in python3 python3.12 python3.11 python3.13; do
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if [[ -x "$VENV/bin/python" ]] && ! python_ok "$VENV/bin/python"; then
    say "the virtualenv $VENV is broken or too old; recreating it"
    rm -rf "$VENV"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    if [[ -n "${PYTHON:-}" ]]; then
        python_ok "$PYTHON" || die "PYTHON=$PYTHON is not a Python 3.11 or newer with the venv module"
        python=$(command -v "$PYTHON")
    elif ! python=$(find_python); then
        found=$(python3 --version 2>/dev/null) || found="no python3 on PATH"
        die "gpuyard needs Python 3.11 or newer (with venv); found: $found.
  Install one, for example:
    Debian 12 / Ubuntu 24.04:  sudo apt-get install -y python3 python3-venv
    Ubuntu 22.04:              sudo apt-get install -y python3.11 python3.11-venv
    any Linux / macOS:         pyenv install 3.11 && pyenv local 3.11
  then run this again (or point PYTHON=/path/to/python3.11 at it)."
    fi
    say "creating virtualenv $VENV with $("$python" --version 2>&1) ($python)"
    if ! "$python" -m venv "$VENV"; then
        rm -rf "$VENV"
        die "could not create $VENV (error above). On Debian/Ubuntu: sudo apt-get install -y python3-venv"
    fi
fi

# The stamp holds one line per install done for this pyproject.toml: "<its sha256> <extras>".
pyproject_sha=$("$VENV/bin/python" -c \
    'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')
want="$pyproject_sha $extras_csv"
if [[ -f "$STAMP" ]] && grep -qxF "$want" "$STAMP" &&
    "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("gpuyard")' >/dev/null 2>&1; then
    say "Python packages are up to date (${extras_csv:-no extras})"
    exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore
say "upgrading pip in $VENV"
if ! "$VENV/bin/python" -m pip install -q --upgrade pip >"$PIP_LOG" 2>&1; then
    cat "$PIP_LOG" >&2
    die "upgrading pip failed (output above; also in $PIP_LOG)"
fi

target="."
[[ -n "$extras_csv" ]] && target=".[$extras_csv]"
say "installing Python packages (first run: a minute or two): pip install -e '$target'"
if ! "$VENV/bin/pip" install -q -e "$target" >"$PIP_LOG" 2>&1; then
    cat "$PIP_LOG" >&2
    die "pip install -e '$target' failed (output above; also in $PIP_LOG): often the network, a proxy or a version conflict. Fix that, then run this again."
fi
# Lines for an older pyproject.toml are stale: keep only this one's, then record this install.
{ grep -F "$pyproject_sha " "$STAMP" 2>/dev/null || true; echo "$want"; } | sort -u >"$STAMP.new"
mv "$STAMP.new" "$STAMP"
say "Python packages installed (${extras_csv:-no extras})"
