#!/usr/bin/env bash
# Idempotent setup: apt packages, a venv at .venv with the locked requirements, genrecast
# itself (editable). Quick when nothing changed (a stamp records the lock's hash).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
while read -r pkg; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < scripts/apt-packages.txt
if ((${#missing[@]})); then
  echo "setup: installing apt packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.genrecast-setup
want=$(cat requirements.lock requirements-nodeps.txt setup.py | sha256sum | cut -c1-16)
if [[ -f $stamp && "$(cat $stamp)" == "$want" ]]; then
  exit 0
fi
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip==24.3.1
echo "setup: installing Python packages from requirements.lock"
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
# Packages whose declared dependencies contradict the lock (see the file): their files only.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
echo "$want" > $stamp
echo "setup: done ($(.venv/bin/python --version), genrecast $(.venv/bin/python -c 'import genrecast; print(genrecast.__version__)'))"
