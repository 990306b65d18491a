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

stage "3/5 train: 2 Spark barrier tasks -> MultiWorkerMirroredStrategy (the CNN, or train.backbone's head)"
$G train --conf "$CONF"

stage "4/5 score: genre, probabilities and embedding per track (nightly: only tracks this model has not scored)"
$G score --conf "$CONF" --mode nightly

stage "5/5 recommend: nearest neighbours over the embeddings"
$G recommend --conf "$CONF"

stage "more like this: by track id, and for one audio file (the cold-start path, no Spark)"
for track in blues/blues-000 classical/classical-000 metal/metal-000; do
  $G similar --conf "$CONF" --track "$track" -k 5
done
# Any audio file works, in the catalogue or not (a catalogue track with the very same bytes is left out).
file=$(find data/catalogue/audio/jazz -type f | sort | head -1)
$G similar --conf "$CONF" --audio "$file" -k 5
$G classify --conf "$CONF" "$file"

root=$(.venv/bin/python -c 'import sys; from genrecast.config import load_config; print(load_config(sys.argv[1]).storage.root)' "$CONF")
stage "done: outputs under $root (datasets/, models/, scores/, neighbours/, rejects/); make notebooks CONF=$CONF to explore them"
