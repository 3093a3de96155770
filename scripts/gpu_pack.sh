#!/usr/bin/env bash
# Packs what `python -m bench.gpu` needs on a lent GPU machine that has no
# virtualenv and no internet: the wheels its image lacks and the 100 slices
# bench.throughput.pick_slices(100) times. Everything goes to .gpu/, which
# git ignores and the device tool carries (`carry: [".gpu"]`).
#
# Usage (repo root or anywhere): bash scripts/gpu_pack.sh
#   PYVER=3.12     Python of the wheels (the device's python3 is 3.12)
#   DATA_DIR=...   where iqoth-nccd/ lives (default ../shared/data)
#   PY=...         Python that runs pip and pick_slices (default .venv/bin/python)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYVER=${PYVER:-3.12}
PY=${PY:-$ROOT/.venv/bin/python}
export DATA_DIR=${DATA_DIR:-$ROOT/../shared/data}
OUT=.gpu

# Only what the device's image ('cuda', docs in KINDS.md) lacks, at the
# versions our .venv runs; numpy, h5py, rich, ml-dtypes, absl-py, packaging,
# requests and prometheus-client are already there. typing-extensions is
# there too, but pydantic 2.14 needs >= 4.16 and the image's version is
# unrecorded: carrying ours (45 kB) rules that out.
WHEELS=(
    keras==3.15.1 namex==0.1.0 optree==0.20.0
    pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3
    python-dotenv==1.2.4 annotated-types==0.8.0 typing-inspection==0.4.5
    typing-extensions==4.16.0
    sqlalchemy==2.1.9 pydicom==3.0.2 redis==7.4.1
)

exclude_gpu_dir() {
    # A worktree's exclude file lives in the common git dir: ask git for it.
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qxF "/$OUT/" "$exclude" 2>/dev/null || echo "/$OUT/" >>"$exclude"
}

fetch_wheels() {
    # --no-deps: the device has the rest; binary wheels only, for its
    # interpreter and glibc (pip matches each manylinux tag exactly).
    rm -rf "$OUT/whl"
    "$PY" -m pip download -q --no-deps --only-binary=:all: \
        --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d "$OUT/whl" "${WHEELS[@]}"
}

copy_slices() {
    # Copies (not links: links travel as links) keep class/file, so that
    # pick_slices(100) over .gpu/data picks exactly these, in the same order.
    local dest=$OUT/data/iqoth-nccd
    rm -rf "$OUT/data"
    "$PY" -c 'import sys
from bench.throughput import DATA_DIR, pick_slices
files = pick_slices(100)
if len(files) != 100:
    sys.exit(f"{DATA_DIR}/iqoth-nccd: {len(files)} slices, need 100")
for f in files:
    print(f.relative_to(DATA_DIR / "iqoth-nccd"), end="\0")' |
        while IFS= read -r -d '' rel; do
            mkdir -p "$dest/$(dirname "$rel")"
            cp "$DATA_DIR/iqoth-nccd/$rel" "$dest/$rel"
        done
    echo "slices: $(find "$dest" -name '*.jpg' | wc -l) copied to $dest"
}

report_size() {
    # The device tool sends at most 64 MiB a call: the files git does not
    # ignore plus the carried .gpu/.
    local tree gpu
    # (|| true: du fails on a tracked file deleted in the working tree; the total stands)
    tree=$(git ls-files -z --cached --others --exclude-standard |
        du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1 || true)
    gpu=$(du -sb "$OUT" | cut -f1)
    awk -v g="$gpu" -v t="$tree" -v d="$OUT" \
        'BEGIN { printf "size: %s %.1f MiB; with the checkout %.1f MiB (limit 64)\n", d, g / 2^20, (g + t) / 2^20 }'
}

exclude_gpu_dir
fetch_wheels
copy_slices
echo "wheels: $(find "$OUT/whl" -name '*.whl' | wc -l) in $OUT/whl (Python $PYVER)"
report_size
echo 'device command, with carry [".gpu"]: bash scripts/gpu_run.sh'
