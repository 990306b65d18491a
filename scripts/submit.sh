#!/usr/bin/env bash
# make submit JOB=ingest CONF=conf/cluster.yaml [ARGS="--full"]
#
#   scripts/submit.sh JOB [job options...]
#
# Prints, then runs (exec) the spark-submit command for a genrecast job: JOB is ingest, train,
# score, recommend, compact or nightly (jobs/JOB.py) or a path to another .py entry point.
# Exits with the job's status (0 ok, 1 job failure, 2 bad usage or config). Built from:
#   --master       MASTER, else the config's spark.master
#   --name         the config's spark.app_name
#   --conf k=v     every spark.conf entry of the config: settings read only at launch (driver
#                  memory, executor sizing, dynamic allocation, spark.jars) take effect
#   --py-files     $DIST/genrecast.zip (make package): executors import genrecast from it
#   --archives     $DIST/genrecast-env.tar.gz#environment when it exists (make package
#                  ENV_ARCHIVE=1) and ENV_ARCHIVE is not 0; executors then run
#                  ./environment/bin/python
#   Python         executors: EXECUTOR_PYTHON, else the archive's python, else PYSPARK_PYTHON
#                  (a path that must exist on every node; `make submit` passes
#                  only one set in your environment), else
#                  the cluster's default. Driver (client mode): this checkout's venv python.
# Other environment: CONF (default conf/cluster.yaml), DEPLOY_MODE (client, or cluster: the
# config file is then shipped with --files), SUBMIT_ARGS (extra spark-submit options, split on
# spaces), SPARK_SUBMIT (default $SPARK_HOME/bin/spark-submit, else the venv's), DIST (dist),
# DRY_RUN=1 (print only).
#
# Credentials are never on this command line: executors use the cluster's AWS chain (instance or
# pod roles, the Spark daemons' environment), or GENRECAST_FORWARD_AWS_ENV=1 hands the
# submitting shell's AWS_* variables to them through the driver (see README).
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: scripts/submit.sh JOB [job options]  (JOB: ingest, train, score, recommend, compact, nightly or a .py file)"
job=${1:-}
[[ -n "$job" ]] || { echo "$usage" >&2; exit 2; }
shift
case "$job" in
  ingest | train | score | recommend | compact | nightly) script=jobs/$job.py ;;
  *.py) script=$job ;;
  *) echo "submit: error: unknown job '$job'; $usage" >&2; exit 2 ;;
esac
[[ -f "$script" ]] || { echo "submit: error: no such job script: $script" >&2; exit 2; }

CONF=${CONF:-conf/cluster.yaml}
DIST=${DIST:-dist}
PY=${PY:-.venv/bin/python}
DEPLOY_MODE=${DEPLOY_MODE:-client}
[[ -f "$CONF" ]] || { echo "submit: error: config file not found: $CONF" >&2; exit 2; }
[[ -f "$DIST/genrecast.zip" ]] || { echo "submit: error: $DIST/genrecast.zip missing: run make package" >&2; exit 2; }

# The config, validated as the job will validate it (GENRECAST__ overrides included):
# line 1 spark.master, line 2 spark.app_name, then one spark.conf entry per line.
settings=$("$PY" - "$CONF" <<'PY'
import sys
from genrecast.config import load_config
from genrecast.errors import ConfigError
try:
    cfg = load_config(sys.argv[1])
except ConfigError as exc:
    sys.exit(f"submit: error: {exc}")
print(cfg.spark.master)
print(cfg.spark.app_name)
for key, value in cfg.spark.conf.items():
    if "\n" in key + value:
        sys.exit(f"submit: error: {sys.argv[1]}: spark.conf.{key}: line break in a Spark setting")
    print(f"{key}={value}")
PY
) || exit 2
mapfile -t lines <<<"$settings"
master=${MASTER:-${lines[0]}}
cmd=(--master "$master" --deploy-mode "$DEPLOY_MODE" --name "${lines[1]}")
for line in "${lines[@]:2}"; do
  [[ -n "$line" ]] && cmd+=(--conf "$line")
done
cmd+=(--py-files "$DIST/genrecast.zip")

archive=$DIST/genrecast-env.tar.gz
if [[ -n "${EXECUTOR_PYTHON:-}" ]]; then
  executor_python=$EXECUTOR_PYTHON
elif [[ "${ENV_ARCHIVE:-auto}" != "0" && -f "$archive" ]]; then
  cmd+=(--archives "$archive#environment")
  executor_python=./environment/bin/python
else
  executor_python=${PYSPARK_PYTHON:-}
fi
[[ -n "$executor_python" ]] && cmd+=(--conf "spark.pyspark.python=$executor_python")
if [[ "$DEPLOY_MODE" == "cluster" ]]; then
  # The driver runs on the cluster too: same Python as the executors, the config shipped beside it.
  [[ -n "$executor_python" ]] && cmd+=(--conf "spark.pyspark.driver.python=$executor_python")
  cmd+=(--files "$CONF")
  job_conf=$(basename "$CONF")
else
  cmd+=(--conf "spark.pyspark.driver.python=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")")
  job_conf=$CONF
fi
# shellcheck disable=SC2206 # SUBMIT_ARGS is a list of options, split on spaces on purpose
[[ -n "${SUBMIT_ARGS:-}" ]] && cmd+=($SUBMIT_ARGS)

if [[ -n "${SPARK_SUBMIT:-}" ]]; then
  submit=$SPARK_SUBMIT
elif [[ -n "${SPARK_HOME:-}" && -x "$SPARK_HOME/bin/spark-submit" ]]; then
  submit=$SPARK_HOME/bin/spark-submit
else
  submit=$(dirname "$PY")/spark-submit
fi
full=("$submit" "${cmd[@]}" "$script" --conf "$job_conf" "$@")
echo "submit: $(printf '%q ' "${full[@]}")" >&2
[[ "${DRY_RUN:-0}" == "1" ]] && exit 0
exec "${full[@]}"
