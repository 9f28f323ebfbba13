#!/usr/bin/env bash
# Pack what a GPU session needs on the workplace's device machine into .devcarry/ (git-ignored), in two parts
# that each fit the device tool's 64 MiB per call together with the working tree:
#   part1: the first 60 MB of the SmolLM2-135M GGUF (98 MB: too large for one call)
#   part2: the rest of it, its sha256, the wheels the GPU image lacks (DeepSpeed and what it needs that is not
#          there, gguf), the model folder without its weights, and the tokenised corpus + held-out text +
#          unseen-domain corpus (xz)
# The device machine has no network: tools/device/device_session.sh unpacks these there, converts the model with
# tools/convert_smollm2.py as `make model` does here, and runs the GPU checks (docs/BENCHMARKS.md, "GPU session").
#
#   bash tools/device/device_pack.sh          (builds the model, the corpora and their bins first when missing)
#   PY_VERSION=3.11 bash tools/device/device_pack.sh    # wheels for another Python (a rehearsal here)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
PY_VERSION=${PY_VERSION:-3.12}  # the device machine's Python (the wheels of compiled packages are per version)
D=.devcarry
MODEL=.cache/models/smollm2-135m
MODEL_BINS=.cache/bin/smollm2-135m
LIMIT=$((64 * 1024 * 1024))
SPLIT=60000000
# Build what the pack needs (each step is cached: a no-op when done): the model, both corpora, and the corpus
# tokenised with the model's tokenizer, as the demo and the experiment would have left it.
make -s model corpus corpus-unseen
DOMAINS=$($PY -c "from megadrp.data.corpus_manifest import manifest_domains; print(' '.join(manifest_domains('.cache/corpus')))")
for split in train heldout; do
  missing=0
  for d in $DOMAINS; do [ -e "$MODEL_BINS/${split}_$d.idx" ] || missing=1; done
  if [ $missing = 1 ]; then
    inputs=(); for d in $DOMAINS; do inputs+=(".cache/corpus/$split/$d.jsonl"); done
    $PY -m megadrp preprocess --input "${inputs[@]}" --output-prefix "$MODEL_BINS/$split" --tokenizer "$MODEL" \
      --append-eod --per-domain --workers 2 --no-progress --overwrite  # some are missing: rebuild the set
  fi
done
for need in "$MODEL/model.safetensors" .cache/corpus/manifest.json .cache/corpus_unseen/manifest.json; do
  [ -e "$need" ] || { echo "device_pack: $need is missing after make model corpus corpus-unseen" >&2; exit 2; }
done
GGUF=$($PY -c "import sys; sys.path.insert(0, 'tools'); import convert_smollm2 as c
print(c.find_gguf_folder(install=False) / c.GGUF_NAME)")
rm -rf "$D"
mkdir -p "$D/part1" "$D/part2/wheels"
head -c $SPLIT "$GGUF" >"$D/part1/model.gguf.0"
tail -c +$((SPLIT + 1)) "$GGUF" >"$D/part2/model.gguf.1"
sha256sum <"$GGUF" | cut -d' ' -f1 >"$D/part2/model.gguf.sha256"
basename "$GGUF" >"$D/part2/model.gguf.name"

# The GPU image (docs/ENVIRONMENT.md; the device tool's package list) has torch, transformers, safetensors,
# tokenizers, numpy, pyyaml, msgpack, ninja, einops, psutil, py-cpuinfo and tqdm, but not these. Same versions as
# here; DeepSpeed ships only a source archive, so its wheel is built here (pure Python: no ops are prebuilt).
version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
PKGS=(hjson pydantic pydantic_core annotated-types typing-inspection typing_extensions gguf)
PINS=()
for p in "${PKGS[@]}"; do PINS+=("$p==$(version "$p")"); done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$D/part2/wheels" "${PINS[@]}"
$PY -m pip wheel -q --no-deps -w "$D/part2/wheels" "deepspeed==$(version deepspeed)"

# The model folder without its weights: transformers 5.17 (the GPU image's) dequantises the GGUF to the same
# weights as 5.24 here, bit for bit, but reads its tokenizer's special tokens wrong (eos <|im_start|>, no pad).
# The session converts there and keeps only the weights; config and tokenizer are these.
sha256sum <"$MODEL/model.safetensors" | cut -d' ' -f1 >"$D/part2/model.safetensors.sha256"
tar -cJf "$D/part2/data.tar.xz" --exclude=model.safetensors "$MODEL" .cache/corpus/manifest.json \
  .cache/corpus/heldout "$MODEL_BINS" .cache/corpus_unseen/manifest.json .cache/corpus_unseen/heldout

tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
status=0
for part in part1 part2; do
  size=$(du -sb "$D/$part" | cut -f1)
  total=$((size + tree))
  printf '%s: %d MiB (+ working tree %d MiB) = %d of %d MiB\n' "$part" $((size >> 20)) $((tree >> 20)) \
    $((total >> 20)) $((LIMIT >> 20))
  [ $total -le $LIMIT ] || { echo "device_pack: $part is over the device tool's limit" >&2; status=1; }
done
ls -l "$D/part2/wheels"
exit $status
