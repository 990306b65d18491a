#!/usr/bin/env bash
# make package: build what spark-submit ships to a cluster, in dist/.
#
# DIST (default dist) names the folder.
#
#   dist/genrecast-<version>-py3-none-any.whl  the package, pip-installable: bake it into a
#                                              cluster image / bootstrap action, or into an
#                                              environment archive (below)
#   dist/genrecast.zip                         the same package for spark-submit --py-files
#                                              (Spark puts it on the driver's and executors'
#                                              sys.path; genrecast is pure Python)
#   dist/genrecast-env.tar.gz                  only with ENV_ARCHIVE=1: a packed Python
#                                              environment for clusters that have none
#                                              (spark-submit --archives ...#environment,
#                                              PYSPARK_PYTHON=./environment/bin/python;
#                                              scripts/submit.sh adds both when it exists)
#
# The environment archive is a fresh venv holding requirements.lock plus the wheel (never the
# editable checkout), packed with venv-pack when it is installed, else with tar. Either way the
# archive does not contain the Python interpreter itself: bin/python links to the interpreter
# the venv was made from (ENV_PYTHON, default python3.11), which must exist at the same path on
# every node (same OS image). Where nodes differ, build a conda environment and pack it with
# conda-pack instead (it carries the interpreter), or bake the environment into the image
# (EMR bootstrap action, Dataproc initialization action, the container image on Kubernetes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DIST=${DIST:-dist}

# A previous environment archive stays unless ENV_ARCHIVE=1 rebuilds it (it takes minutes).
mkdir -p "$DIST" && rm -rf "$DIST"/genrecast-*.whl "$DIST/genrecast.zip" build/lib build/bdist.*
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$DIST" . >/dev/null
wheel=$(ls "$DIST"/genrecast-*.whl)
# --py-files wants a zip with the package at its root: the wheel's files without its metadata.
"$PY" - "$wheel" "$DIST/genrecast.zip" <<'PY'
import sys, zipfile
src, dst = sys.argv[1:]
with zipfile.ZipFile(src) as whl, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as out:
    for info in whl.infolist():
        if info.filename.startswith("genrecast/"):
            out.writestr(info, whl.read(info))
PY
echo "package: $wheel"
echo "package: $DIST/genrecast.zip (spark-submit --py-files)"

if [[ "${ENV_ARCHIVE:-0}" == "1" ]]; then
  env_dir=build/env
  rm -rf "$env_dir"
  "${ENV_PYTHON:-python3.11}" -m venv "$env_dir"
  "$env_dir/bin/python" -m pip install -q --disable-pip-version-check -r requirements.lock "$wheel"
  "$env_dir/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
  if command -v venv-pack >/dev/null; then
    venv-pack -p "$env_dir" -o "$DIST/genrecast-env.tar.gz" --force
  else
    tar -C "$env_dir" -czf "$DIST/genrecast-env.tar.gz" .
  fi
  echo "package: $DIST/genrecast-env.tar.gz ($(du -h "$DIST/genrecast-env.tar.gz" | cut -f1); interpreter: $(readlink -f "$env_dir/bin/python"))"
fi
