#!/usr/bin/env bash
# The bundled demo model's training run, stage by stage (docs/demo-model.md has the why).
#
#   bash scripts/train_demo.sh STAGE...
#
#   data       5000 training + 200 held-out dialogues (espeak-ng)    data/train, data/eval
#   evaldata   the held-out dialogues only                             data/eval
#   tokenizer  SentencePiece on the training text                      runs/tokenizer
#   codec      the codec, TRAIN_CODEC_MINUTES of training              runs/codec
#   lm         the LM on the codec's tokens, TRAIN_LM_MINUTES          runs/lm
#   export     assets/ (model.safetensors bf16, codec.safetensors fp16, tokenizer, configs)
#   eval       the quality figures on EVAL_COUNT held-out dialogues    runs/eval.json
#   pack       runs/{tokenizer,codec} + assets/ + logs as a tar, cut in 15 MB parts, into
#              $PACK_DIR (default $OUT: the device tool's output folder)
#
# Stages that find their output already there are skipped (data, tokenizer); codec and lm resume
# their checkpoints. Everything is seeded (SEED, default 0): the same commands give the same data
# and tokenizer, and the same weights up to GPU arithmetic (cuDNN and atomics are not bitwise
# deterministic); log.jsonl of each run records its step count for `--steps`.
#
# On a machine without espeak-ng or without soundfile/soxr (the GPU image), carry .gpu/ made by
# scripts/gpu_bundle.sh: this script installs its wheels and uses its espeak-ng.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

py=${PYTHON:-python3}
device=${DEVICE:-cuda}
seed=${SEED:-0}
train_count=${TRAIN_COUNT:-5000}
eval_count=${EVAL_COUNT:-200}
codec_minutes=${TRAIN_CODEC_MINUTES:-6}
lm_minutes=${TRAIN_LM_MINUTES:-7}
config=${CONFIG:-demo}  # tiny: the test shapes, for a dry run on a CPU
frames=${FRAMES:-250}   # LM training window (at most the LM's context: 12 for tiny)
site=/tmp/antiphon-site

if ! "$py" -c "import soundfile, soxr" 2>/dev/null; then
    [ -d .gpu/wheels ] || { echo "train_demo: no soundfile/soxr and no .gpu/wheels" >&2; exit 1; }
    "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" .gpu/wheels/*.whl
    export PYTHONPATH="$site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
train() { "$py" -m app.train "$@"; }
plus() { awk "BEGIN { print $1 + $2 }"; }

speech_env=()
if ! ldconfig -p | grep -q 'libespeak-ng\.so\.1 '; then
    [ -d .gpu/espeak ] || { echo "train_demo: no espeak-ng and no .gpu/espeak" >&2; exit 1; }
    speech_env=(env LD_LIBRARY_PATH="$PWD/.gpu/espeak/lib"
        ANTIPHON_ESPEAK_LIBRARY="$PWD/.gpu/espeak/lib/libespeak-ng.so.1"
        ESPEAK_DATA_PATH="$PWD/.gpu/espeak")
fi
workers=$(nproc)

for stage in "$@"; do
    echo "=== $stage ($(date +%T))"
    case "$stage" in
        data|evaldata)
            [ "$stage" = evaldata ] || [ -f data/train/manifest.jsonl ] \
                || "${speech_env[@]}" "$py" -m app.train data --out data/train \
                --count "$train_count" --split train --seed "$seed" --workers "$workers"
            [ -f data/eval/manifest.jsonl ] || "${speech_env[@]}" "$py" -m app.train data \
                --out data/eval --count "$eval_count" --split eval --seed "$seed" \
                --workers "$workers"
            ;;
        tokenizer)
            [ -f runs/tokenizer/tokenizer.model ] || train tokenizer --data data/train \
                --out runs/tokenizer --vocab-size 1024 --seed "$seed"
            ;;
        codec)
            train codec --data data/train --out runs/codec --device "$device" --seed "$seed" \
                --config "$config" --minutes "$codec_minutes" \
                --time-limit "$(plus "$codec_minutes" 1.5)" --batch-size 32 --segment 1.2 \
                --max-hours 3 --no-progress --log-every 200
            ;;
        lm)
            train lm --data data/train --codec runs/codec --tokenizer runs/tokenizer \
                --out runs/lm --device "$device" --seed "$seed" --config "$config" \
                --minutes "$lm_minutes" --time-limit "$(plus "$lm_minutes" 1.5)" \
                --batch-size 32 --frames "$frames" --no-progress --log-every 200
            ;;
        export)
            train export --codec runs/codec --lm runs/lm --tokenizer runs/tokenizer --out assets
            ;;
        eval)
            "${speech_env[@]}" "$py" -m app.train eval --assets assets --data data/eval \
                --count "${EVAL_DIALOGUES:-100}" --device "${EVAL_DEVICE:-cpu}" \
                --json runs/eval.json
            ;;
        pack)
            pack_dir=${PACK_DIR:-${OUT:?set PACK_DIR or OUT}}
            files=()
            for f in runs/tokenizer/tokenizer.model runs/codec/codec.safetensors \
                runs/codec/codec.json runs/codec/log.jsonl runs/lm/config.json \
                runs/lm/log.jsonl runs/eval.json assets/model.safetensors \
                assets/codec.safetensors assets/tokenizer.model assets/config.json \
                assets/codec.json; do
                [ -e "$f" ] && files+=("$f")
            done
            tar cf - "${files[@]}" | split -b 15M -d - "$pack_dir/demo-model.tar.part-"
            ls -l "$pack_dir"
            ;;
        *)
            echo "train_demo: unknown stage $stage (see the top of this file)" >&2
            exit 2
            ;;
    esac
done
