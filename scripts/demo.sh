#!/usr/bin/env bash
# make demo: every built stage on the rendered demo catalogue, then where the outputs are.
set -euo pipefail
cd "$(dirname "$0")/.."
CONF=${1:-conf/local.yaml}
G=.venv/bin/genrecast
stage() { printf '\n=== %s ===\n' "$*"; }

stage "1/5 demo-catalogue: render genre-labelled tracks (cached after the first run)"
$G demo-catalogue --conf "$CONF"

stage "2/5 ingest: catalogue -> Spark -> Petastorm mel dataset"
$G ingest --conf "$CONF"

stage "3/5 train: 2 Spark barrier tasks -> MultiWorkerMirroredStrategy CNN"
$G train --conf "$CONF"

for cmd in score recommend; do
  if ! $G "$cmd" --help >/dev/null 2>&1; then
    stage "$cmd: not built yet (see the open issues); skipped"
  fi
done
if $G score --help >/dev/null 2>&1; then
  stage "4/5 score: genre + embedding per track (nightly)"
  $G score --conf "$CONF" --mode nightly
fi
if $G recommend --help >/dev/null 2>&1; then
  stage "5/5 recommend: nearest neighbours over the embeddings"
  $G recommend --conf "$CONF"
  stage "more like this"
  for track in blues/blues-000 classical/classical-000 metal/metal-000; do
    $G similar --conf "$CONF" --track "$track" -k 5 || true
  done
fi
stage "done: outputs under data/genrecast (datasets/, models/, scores/, neighbours/, rejects/)"
