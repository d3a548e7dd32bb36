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
# .gpu/ is ignored by git (.git/info/exclude); it is about 45 MB. wandb is left out (62 MB): its tests skip there.
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
cp "$data"/*-ubyte.gz .gpu/data/FashionMNIST/raw/
cp -r .git .gpu/git
cat >.gpu/run.sh <<'EOF'
#!/bin/bash
# Runs on the GPU machine (written by scripts/gpu_bundle.sh); $OUT is the folder whose files come back.
cd "$(dirname "$0")/.." || exit 2
# the commit results record is the bundled checkout's (the machine's own copy of .git may be older); .git stays
export GIT_DIR=$PWD/.gpu/git GIT_WORK_TREE=$PWD
git config --global --add safe.directory "*"
export PYTHONPATH=$PWD/.gpu/site:$PWD PCLC_DATA=$PWD/.gpu/data PYTHONUNBUFFERED=1 WANDB_MODE=disabled
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{ date -u; nvidia-smi; python3 -c "import sys, torch; print(sys.version); print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.get_device_name())"; nproc; lscpu | grep 'Model name'; git log --oneline -1; } >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
repro() { python3 -m pclc.reproduce "$@" logger=none store=/tmp/pclc-runs out_dir=/tmp/pclc-results; }
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
du -sh .gpu
