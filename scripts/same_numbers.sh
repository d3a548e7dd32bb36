#!/bin/bash
# Do two versions of the code write the same numbers? Runs Tables 1, 3, 5, the audit, the deviations study and the
# summary on the tiny profile (fake data in place of Fashion-MNIST) with the OLD code, copies its run store, reruns
# them with the NEW code on the copy (finished work is reused, so the new code re-reads what the old one computed),
# and diffs every results file with provenance (commit, date, command paths) normalised away.
#   scripts/same_numbers.sh <old checkout> <new checkout> [work dir]
set -euo pipefail
OLD=$(realpath "$1"); NEW=$(realpath "$2"); W=${3:-/tmp/same-numbers}
PY=${PYTHON:-$(dirname "$0")/../.venv/bin/python}; PY=$(realpath "$PY")
COMMON=(profile=tiny logger=none "datasets=[fmnist]" "dataset_map={fmnist: fake}")
rm -rf "$W"; mkdir -p "$W/old" "$W/new"
run() {  # code dir, store, out dir
  for e in table1 table3 table5 audit deviations; do
    (cd "$1" && PYTHONPATH="$1" "$PY" -m pclc.reproduce experiment=$e "${COMMON[@]}" store="$2" out_dir="$3") \
      > "$3.$e.log" 2>&1 || { echo "FAILED: $1 experiment=$e (log $3.$e.log)"; exit 1; }
  done
  (cd "$1" && PYTHONPATH="$1" "$PY" -m pclc.summary --results "$3/tiny") > "$3.summary.log" 2>&1
}
run "$OLD" "$W/runs_old" "$W/old"
cp -r "$W/runs_old" "$W/runs_new"
run "$NEW" "$W/runs_new" "$W/new"
(cd "$W/old" && find . -type f | sort) > "$W/old.files"; (cd "$W/new" && find . -type f | sort) > "$W/new.files"
diff "$W/old.files" "$W/new.files" && echo "same file list: $(wc -l < "$W/old.files") files"
norm() { sed -E "s#$W/(old|new)#OUT#g; s#$W/runs_(old|new)#STORE#g; s#[0-9a-f]{40}#COMMIT#g; s#20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9:.+]+#DATE#g" "$1"; }
n=0
for f in $(grep -v '\.png$' "$W/old.files"); do
  if ! diff <(norm "$W/old/$f") <(norm "$W/new/$f") > "$W/diff.tmp"; then echo "--- $f"; head -20 "$W/diff.tmp"; n=$((n + 1)); fi
done
echo "files differing beyond provenance: $n of $(grep -vc '\.png$' "$W/old.files") text files"
