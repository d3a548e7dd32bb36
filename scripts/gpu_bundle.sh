#!/bin/bash
# Prepare .gpu/ for a short lease of a bare GPU image that has PyTorch but not pclc's other packages (the first
# H200 run, docs/performance.md): the pure-Python packages pclc imports, copied from this checkout's .venv;
# Fashion-MNIST's four .gz files; a copy of .git (the image's own copy of the repository may be older, and results
# record the commit); and .gpu/run.sh, which runs there:
#
#     scripts/gpu_bundle.sh                    # here, after `make setup` and with dataset-fashion-mnist installed
#     bash .gpu/run.sh gpu-check               # there: make gpu-check under a budget (BUDGET seconds, default 420)
#     bash .gpu/run.sh verify                  # there: make verify-zoo on the GPU
#     bash .gpu/run.sh reproduce experiment=table5 datasets=[fmnist] from_zoo=true   # a table from the zoo
#     bash .gpu/run.sh regenerate              # there: every file awaiting regeneration from the zoo, in order
#
# `regenerate` runs REGENERATE's steps (default: the baselines, AutoAttack on 1,000 images, the deviations study:
# the file tests/test_zoo.py's AWAITING_REGENERATION lists and the ones issues 30 and 31 add; Tables 5 and 3, Table
# 3 over five seeds and the audit were regenerated from the zoo on the CPU, 2026-12-05), each from the zoo (whose
# evaluation records fill the store first: what a CPU finished is not computed again), until DEADLINE seconds
# (default 540, inside one call's 600) have passed. After every step the results so far are packed
# (results.tgz) and so are the zoo's evaluation records (records.tgz: `python -m pclc.records save`; unpack it
# in the checkout and commit `results/zoo/*/records/`), so a call cut short keeps every finished table and every
# finished attack, and the next session, CPU or GPU, resumes from them. A table with cells from both names each
# device ("attacks computed on" lines).
#
# What travels to the machine (the tracked tree and .gpu/) must stay under the lease's 64 MiB; the tracked tree alone
# is ~35 MiB with the zoo, so .gpu/ packs small (~28 MiB): the packages as one .tar.xz; the training images
# as an xz of the raw idx file (22.6 MB against gzip's 26.4); and, for the commit results record, a git directory
# holding the commits, the head's trees and the index but no file contents (a whole copy of .git had grown to 74 MB):
# `git rev-parse HEAD` and `git status` (the dirty flag) need nothing more, since git hashes the files themselves.
# run.sh unpacks the packages and the images on its first call. The script refuses a bundle over the limit.
# .gpu/ is ignored by git (.git/info/exclude). wandb is left out (62 MB): its tests skip there.
set -euo pipefail
cd "$(dirname "$0")/.."
site=.venv/lib/python3*/site-packages
[ -d .venv ] || { echo "error: no .venv here: run make setup first" >&2; exit 2; }
data=${PCLC_FMNIST:-/usr/share/datasets/fashion-mnist}
[ -f "$data/t10k-images-idx3-ubyte.gz" ] || { echo "error: Fashion-MNIST not in $data (apt-get install dataset-fashion-mnist)" >&2; exit 2; }
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >>.git/info/exclude
rm -rf .gpu && mkdir -p .gpu/site .gpu/data/FashionMNIST/raw
for pkg in hydra hydra_plugins omegaconf antlr4 advertorch torchattacks submitit pyautoattack \
  hydra_core-*.dist-info omegaconf-*.dist-info; do
  cp -r $site/$pkg .gpu/site/
done
rm -rf .gpu/site/pyautoattack/examples  # 44 MB of example notebooks and weights
find .gpu/site -name __pycache__ -prune -exec rm -rf {} +
tar cJf .gpu/site.tar.xz -C .gpu site && rm -rf .gpu/site
cp "$data"/t10k-*-ubyte.gz "$data"/train-labels-idx1-ubyte.gz .gpu/data/FashionMNIST/raw/
gzip -dc "$data/train-images-idx3-ubyte.gz" | xz -9e -T0 >.gpu/data/train-images-idx3-ubyte.xz
# every commit (for git log), the head's trees and the index: enough for rev-parse, log and status, no contents
git init -q --bare .gpu/git && git --git-dir=.gpu/git config core.bare false
head=$(git rev-parse HEAD)
{ git rev-list HEAD; git rev-parse "HEAD^{tree}"; git ls-tree -r -d HEAD | awk '{print $3}'; } |
  git pack-objects -q .gpu/git/objects/pack/pack >/dev/null
git --git-dir=.gpu/git update-ref refs/heads/main "$head" && git --git-dir=.gpu/git symbolic-ref HEAD refs/heads/main
cp .git/index .gpu/git/index
cat >.gpu/run.sh <<'EOF'
#!/bin/bash
# Runs on the GPU machine (written by scripts/gpu_bundle.sh); $OUT is the folder whose files come back.
cd "$(dirname "$0")/.." || exit 2
# the commit results record is the bundled checkout's (the machine's own copy of .git may be older); .git stays
export GIT_DIR=$PWD/.gpu/git GIT_WORK_TREE=$PWD
[ -d .gpu/site ] || tar xJf .gpu/site.tar.xz -C .gpu || exit 2
raw=.gpu/data/FashionMNIST/raw img=train-images-idx3-ubyte
if [ ! -f $raw/$img ]; then  # unpacked once (xz: ~3 s); pclc's loader reads the raw idx file
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
    .gpu/data/$img.xz $raw/$img.tmp && mv $raw/$img.tmp $raw/$img || exit 2
fi
git config --global --add safe.directory "*"
export PYTHONPATH=$PWD/.gpu/site:$PWD PCLC_DATA=$PWD/.gpu/data PYTHONUNBUFFERED=1 WANDB_MODE=disabled
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{ date -u; nvidia-smi; python3 -c "import sys, torch; print(sys.version); print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.get_device_name())"; nproc; lscpu | grep 'Model name'; git log --oneline -1; } >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
# the planner's costs for this GPU from its gpu-check bench when one is committed (ETA lines, no unpriced cells)
slug=$(python3 -c "import torch; from pclc.costs import device_slug; print(device_slug(torch.device('cuda')))" 2>/dev/null)
bench=results/gpu-check-$slug/bench-$slug.json; [ -f "$bench" ] && export PCLC_BENCH="bench=$bench" || export PCLC_BENCH=
repro() { python3 -m pclc.reproduce "$@" logger=none store=/tmp/pclc-runs out_dir=/tmp/pclc-results $PCLC_BENCH; }
pack() {
  tar czf "$OUT/results.tgz" -C /tmp pclc-results 2>/dev/null
  python3 -m pclc.records save --store /tmp/pclc-runs >>"$OUT/records.log" 2>&1
  find results/zoo -path '*/records/*' -newer "$OUT/machine.txt" \( -name '*.gz' -o -name '*.bin' \) -print0 | tar czf "$OUT/records.tgz" --null -T -
}
case "${1:-gpu-check}" in
  gpu-check)
    python3 scripts/gpu_check.py --budget "${BUDGET:-420}" 2>&1 | tee "$OUT/gpu_check.log"; rc=${PIPESTATUS[0]}
    tar czf "$OUT/gpu-check.tgz" --exclude='*/runs/*' results/gpu-check-* ;;
  verify)
    python3 -m pclc.verify --out-dir "$OUT" >"$OUT/verify.log" 2>&1; rc=$?; tail -15 "$OUT/verify.log" ;;
  reproduce)  # e.g. bash .gpu/run.sh reproduce experiment=autoattack datasets=[fmnist] from_zoo=true
    shift
    repro "$@" >"$OUT/reproduce.log" 2>&1; rc=$?; tail -15 "$OUT/reproduce.log"
    pack ;;
  regenerate)  # each step's reproduce arguments, one step a line
    steps=${REGENERATE:-"experiment=baselines
experiment=deviations"}  # AutoAttack on 1,000 images is done on the CPU (results/autoattack.md)
    end=$((SECONDS + ${DEADLINE:-540})); rc=0
    export -f repro
    while IFS= read -r step; do
      left=$((end - SECONDS)); [ "$left" -gt 20 ] || { echo "deadline: not started: $step"; rc=124; continue; }
      echo "== $step (${left}s left)"
      # shellcheck disable=SC2086  # a step is several arguments
      timeout "$left" bash -c 'repro "$@"' _ $step from_zoo=true >>"$OUT/regenerate.log" 2>&1; s=$?
      echo "   exit $s, ${SECONDS}s since the start"; [ "$s" -eq 0 ] || rc=$s
      pack
    done <<<"$steps"
    tail -15 "$OUT/regenerate.log" ;;
  *) echo "usage: bash .gpu/run.sh [gpu-check|verify|reproduce ARGS...|regenerate]" >&2; rc=2 ;;
esac
exit $rc
EOF
tracked=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
bundle=$(du -sb .gpu | cut -f1)
echo ".gpu: $((bundle / 1048576)) MiB; with the tracked tree $(((tracked + bundle) / 1048576)) MiB of the lease's 64"
[ $((tracked + bundle)) -le $((64 * 1048576)) ] || { echo "error: over the lease's 64 MiB" >&2; exit 3; }
