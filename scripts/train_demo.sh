#!/usr/bin/env bash
# The bundled demo model's training run, stage by stage (docs/demo-model.md has the why and the
# measured times: about half a day on a 2-core CPU, most of it encoding the 18,000 dialogues for
# the LM and training it; every stage stops and goes on).
#
#   RUN_DIR=/somewhere/outside/the/clone bash scripts/train_demo.sh STAGE...
#
#   data       TRAIN_COUNT training + EVAL_COUNT held-out dialogues    RUN_DIR/data/{train,eval}
#              (a larger count on existing folders makes only the new ones; `lm` then
#              encodes only those); TRAIN2_COUNT more training dialogues of the next seed in
#              RUN_DIR/data/train2: how a run gets more data once data/train was made by an
#              older generator (a folder only grows with dialogues of its own generator)
#   tokenizer  SentencePiece on the training text                      RUN_DIR/tokenizer
#   teacher    a small phoneme recogniser on log-mel (CTC, speed-perturbed and SpecAugment-masked
#              speech), TEACHER_STEPS steps, TEACHER_DIM wide and TEACHER_LAYERS deep, on the
#              first TEACHER_DIALOGUES training dialogues (held in memory: 6000 take ~10 GB): the
#              codec's first codebook learns its hidden states, as Mimi's learns WavLM's
#                                                                       RUN_DIR/teacher
#   codec      the codec, CODEC_STEPS steps (or CODEC_MINUTES of training), its first codebook
#              taught the phonemes being said from the first quantized step (espeak-ng labels
#              over the aligned words, CODEC_PHONEME_WEIGHT, default 1): codes that say what is
#              said, whoever says it, so the LM can learn to hear       RUN_DIR/codec
#              and, with a teacher (RUN_DIR/teacher or KEPT/teacher), its hidden states
#   distil     DISTIL_STEPS more codec steps from KEPT/codec (a codec trained without a teacher)
#              that teach its first codebook the teacher's states   RUN_DIR/codec-distil
#   phonemes   (for a codec trained with CODEC_PHONEME_WEIGHT=0) PHONEME_STEPS more codec steps
#              from RUN_DIR/codec that teach its first codebook the phonemes  RUN_DIR/codec-phonemes
#   keep       what is finished, to commit: the codec (fp16, as it ships; codec-distil or
#              codec-phonemes where that stage ran), the teacher, the tokenizer, and the LM as far as it got (bf16 weights, config,
#              log): later stages build on them where RUN_DIR has none   trained/{codec,tokenizer,lm}
#   lm         the LM on the tokens of trained/codec, the codec that ships (run `keep` after a
#              new codec), LM_STEPS steps, with the training-only hearing head (HEAR_WEIGHT,
#              default 1), the depth transformer on DEPTH_SHARE of the frames (default 0.25:
#              2.5x faster steps on a CPU) and the tokens that make an answer right weighed
#              ANSWER_WEIGHT (default 3); with no checkpoint in RUN_DIR/lm but a kept LM, it
#              starts from trained/lm; CODEC_EMBEDDINGS=1 (after a new codec) starts the audio
#              embeddings from the codec's codebooks; MONOLOGUE_HEARS=1 has the monologue
#              write the user's words down too, and answer from them; USER_NOISE="S A"
#              replaces shares S and A of the user's semantic and acoustic codes by random
#              ones in training (`train lm --user-noise`); FROZEN_USER_EMBEDDINGS=1 never
#              trains the user's audio embeddings (`--frozen-user-embeddings`)   RUN_DIR/lm
#              (and the held-out best so far, which keep and export take: RUN_DIR/lm/best)
#   hear       HEAR_STEPS more steps from RUN_DIR/lm with the training-only hearing head (the
#              user's words as targets), a new learning-rate schedule   RUN_DIR/lm-hear
#   decoder    (optional) the codec's decoder side only, DECODER_STEPS more steps: every code
#              stays the same, so the LM is unchanged; export then takes it  RUN_DIR/codec-decoder
#   export     the shipped files (LM bf16, codec fp16, tokenizer, configs)   ASSETS
#   eval       the quality figures on EVAL_DIALOGUES held-out dialogues RUN_DIR/eval.json
#              and each request as a Full-Duplex-Bench sample                RUN_DIR/fdb
#              (AGAINST=FILE: another model's eval.json, compared request by request)
#   fdb        `antiphon eval` on those samples                              RUN_DIR/fdb-eval
#   bench      frame time of the demo shapes on THREADS threads               RUN_DIR/bench.json
#   card       ASSETS/MODEL_CARD.md from everything above (LINEAGE=FILE, from the  ASSETS
#              clone's root like every path here: how a model
#              made over several runs was trained, in place of this run's table:
#              trained/LINEAGE.md for the shipped one)
#
# Every stage can be stopped at any moment (Ctrl-C, SIGTERM, a machine that goes away) and the
# same command goes on: data and tokenizer stages are skipped once their output is there, codec
# and lm resume from their checkpoint (written every few minutes) and compute the same numbers
# as a run that never stopped. Everything is seeded (SEED, default 0). Progress, the time left
# and peak memory go to RUN_DIR/*.log and each run's log.jsonl.
#
# KEPT (default trained/; RUN_DIR/kept for CONFIG=tiny): where `keep` puts what is finished and
# later stages look for it.
# Threads: THREADS (default: all cores) for the training; anything run beside it should use one
# thread (OMP_NUM_THREADS=1), or both slow down many times over. DEVICE=cuda uses a GPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

py=${PYTHON:-.venv/bin/python}
run_dir=${RUN_DIR:-runs}
assets=${ASSETS:-app/assets}
device=${DEVICE:-cpu}
seed=${SEED:-0}
threads=${THREADS:-$(nproc)}
train_count=${TRAIN_COUNT:-18000}
eval_count=${EVAL_COUNT:-300}
codec_steps=${CODEC_STEPS:-5000}
codec_budget=(--steps "$codec_steps")
[ -n "${CODEC_MINUTES:-}" ] && codec_budget=(--minutes "$CODEC_MINUTES")
lm_steps=${LM_STEPS:-3000}
hear_steps=${HEAR_STEPS:-1500}
phoneme_steps=${PHONEME_STEPS:-1200}
teacher_steps=${TEACHER_STEPS:-3000}
teacher_shape=(--dim "${TEACHER_DIM:-256}" --layers "${TEACHER_LAYERS:-6}" \
    --dialogues "${TEACHER_DIALOGUES:-6000}")
distil_steps=${DISTIL_STEPS:-1200}
config=${CONFIG:-demo}  # tiny: the test shapes, for a dry run of every stage in minutes
frames=${FRAMES:-400}   # the LM's longest training window (frames)

train() { "$py" -m app.train "$@"; }
lm_folders() {  # the LM's training folders: data/train, and data/train2 once it is made
    lm_data=("$run_dir/data/train")
    [ ! -f "$run_dir/data/train2/manifest.jsonl" ] || lm_data+=("$run_dir/data/train2")
}
convert() {  # a safetensors file in another dtype: convert IN OUT float16|bfloat16
    "$py" -c 'import sys, torch; from pathlib import Path; from safetensors.torch import load_file
from model.bundle import save_safetensors
save_safetensors(load_file(sys.argv[1]), Path(sys.argv[2]), getattr(torch, sys.argv[3]))' "$@"
}
lm_extra=()
# trained/ holds what is finished, committed (`keep`): the codec that ships (the LM learns its
# codes, fp16 weights and all: fp32 weights give 5% other codes), the tokenizer, the LM so far;
# a stage on a machine without RUN_DIR (a new machine, a new session) builds on them
kept=${KEPT:-trained}
# a dry run (CONFIG=tiny) keeps its own files: trained/ holds the demo shapes
[ "$config" = demo ] || kept=${KEPT:-$run_dir/kept}
run_codec="$run_dir/codec"  # the finished codec run: the phoneme-taught one where that stage ran
[ -f "$run_dir/codec-phonemes/codec.safetensors" ] && run_codec="$run_dir/codec-phonemes"
[ -f "$run_dir/codec-distil/codec.safetensors" ] && run_codec="$run_dir/codec-distil"
find_teacher() {  # the run's teacher, else the kept one; teacher_option: for train codec
    teacher="$run_dir/teacher"
    [ -f "$teacher/teacher.safetensors" ] || [ ! -f "$kept/teacher/teacher.safetensors" ] \
        || teacher="$kept/teacher"
    teacher_option=()
    [ ! -f "$teacher/teacher.safetensors" ] || teacher_option=(--teacher "$teacher")
}
codec_for_lm() {
    lm_codec="$run_codec"
    [ ! -f "$kept/codec/codec.safetensors" ] || lm_codec="$kept/codec"
    if [ "$lm_codec" != "$run_codec" ] && [ "$run_codec/codec.safetensors" -nt "$lm_codec/codec.safetensors" ]; then
        echo "train_demo: $run_codec is newer than $lm_codec: run the keep stage first" >&2
        exit 2
    fi
    echo "codec: $lm_codec"
}
run_lm() {  # the LM run's weights to keep or export: its held-out best where it kept one
    lm_weights="$run_dir/lm"
    [ ! -f "$run_dir/lm/best/best.json" ] || lm_weights="$run_dir/lm/best"
}
tokenizer="$run_dir/tokenizer"
[ -f "$tokenizer/tokenizer.model" ] || [ ! -f "$kept/tokenizer/tokenizer.model" ] || tokenizer="$kept/tokenizer"
# a few steps of the tiny codec leave codebooks nearly dead; the real run must not
[ "$config" = tiny ] && lm_extra=(--allow-dead-codes)

for stage in "$@"; do
    echo "=== $stage ($(date +%T))"
    case "$stage" in
        data)
            # makes only what the folders do not list yet: a larger TRAIN_COUNT grows them
            listed=0  # a folder that lists as many already is left as it is (an older one too)
            [ ! -f "$run_dir/data/train/manifest.jsonl" ] \
                || listed=$(wc -l < "$run_dir/data/train/manifest.jsonl")
            [ "$listed" -ge "$train_count" ] || train data --out "$run_dir/data/train" \
                --count "$train_count" --split train --seed "$seed" --workers "$threads"
            [ "${TRAIN2_COUNT:-0}" = 0 ] || train data --out "$run_dir/data/train2" \
                --count "$TRAIN2_COUNT" --split train --seed $((seed + 1)) --workers "$threads"
            train data --out "$run_dir/data/eval" --count "$eval_count" --split eval \
                --seed "$seed" --workers "$threads"
            ;;
        tokenizer)
            [ -f "$run_dir/tokenizer/tokenizer.model" ] || train tokenizer \
                --data "$run_dir/data/train" --out "$run_dir/tokenizer" --vocab-size 1024 \
                --seed "$seed"
            ;;
        teacher)
            train teacher --data "$run_dir/data/train" --eval-data "$run_dir/data/eval" \
                --out "$run_dir/teacher" --device "$device" --seed "$seed" \
                --steps "$teacher_steps" --seconds 2.5 --threads "$threads" "${teacher_shape[@]}" \
                --checkpoint-every 250 --eval-every 500 --no-progress
            ;;
        codec)
            find_teacher
            train codec "${teacher_option[@]}" --data "$run_dir/data/train" --eval-data "$run_dir/data/eval" \
                --out "$run_dir/codec" --device "$device" --seed "$seed" --config "$config" \
                "${codec_budget[@]}" --batch-size 32 --segment 1.2 --max-hours 12 \
                --phoneme-weight "${CODEC_PHONEME_WEIGHT:-1}" \
                --threads "$threads" --checkpoint-every 200 --log-every 50 --eval-every 250 \
                --no-progress
            ;;
        distil)
            find_teacher
            [ -n "${teacher_option[*]}" ] || { echo "train_demo: distil needs a teacher: run the teacher stage" >&2; exit 2; }
            train codec --data "$run_dir/data/train" --eval-data "$run_dir/data/eval" \
                --init "$kept/codec" "${teacher_option[@]}" --phoneme-weight 1 \
                --out "$run_dir/codec-distil" --device "$device" --seed $((seed + 3)) \
                --steps "$distil_steps" --lr 5e-4 --warmup 100 --batch-size 32 --segment 1.2 \
                --max-hours 12 --threads "$threads" --checkpoint-every 100 --log-every 25 \
                --eval-every 200 --no-progress
            ;;
        phonemes)
            train codec --data "$run_dir/data/train" --eval-data "$run_dir/data/eval" \
                --init "$run_dir/codec" --phoneme-weight 1 --out "$run_dir/codec-phonemes" \
                --device "$device" --seed $((seed + 2)) --steps "$phoneme_steps" --lr 5e-4 \
                --warmup 100 --batch-size 32 --segment 1.2 --max-hours 16 \
                --threads "$threads" --checkpoint-every 100 --log-every 25 --eval-every 200 \
                --no-progress
            ;;
        lm)
            codec_for_lm
            lm_folders
            lm_codes=()  # a new codec: its codebooks' geometry for the LM's audio embeddings
            [ "${CODEC_EMBEDDINGS:-0}" = 0 ] || lm_codes=(--codec-embeddings)
            [ "${MONOLOGUE_HEARS:-0}" = 0 ] || lm_codes+=(--monologue-hears)
            # shellcheck disable=SC2206  # two numbers: the semantic and the acoustic share
            [ -z "${USER_NOISE:-}" ] || lm_codes+=(--user-noise $USER_NOISE)
            [ "${FROZEN_USER_EMBEDDINGS:-0}" = 0 ] || lm_codes+=(--frozen-user-embeddings)
            lm_init=()  # a new machine: go on from the kept LM (a new schedule, a new optimizer)
            [ -f "$run_dir/lm/checkpoint.pt" ] || [ ! -f "$kept/lm/lm.safetensors" ] \
                || lm_init=(--init "$kept/lm")
            train lm --data "${lm_data[@]}" --eval-data "$run_dir/data/eval" \
                --codec "$lm_codec" --tokenizer "$tokenizer" "${lm_init[@]}" \
                --out "$run_dir/lm" --device "$device" --seed "$seed" --config "$config" \
                --steps "$lm_steps" --batch-size 20 --frames "$frames" --threads "$threads" \
                --checkpoint-every 100 --log-every 25 --eval-every 250 --no-progress \
                --hear-weight "${HEAR_WEIGHT:-1}" --depth-share "${DEPTH_SHARE:-0.25}" \
                --answer-weight "${ANSWER_WEIGHT:-3}" "${lm_codes[@]}" "${lm_extra[@]}"
            ;;
        hear)
            codec_for_lm
            lm_folders
            hears=()  # as the lm stage: a monologue that writes down what it hears stays one
            [ "${MONOLOGUE_HEARS:-0}" = 0 ] || hears=(--monologue-hears)
            train lm --data "${lm_data[@]}" --eval-data "$run_dir/data/eval" \
                --codec "$lm_codec" --tokenizer "$tokenizer" \
                --init "$run_dir/lm" --out "$run_dir/lm-hear" --device "$device" \
                --seed $((seed + 1)) --config "$config" --steps "$hear_steps" --batch-size 20 \
                --frames "$frames" --lr 6e-4 --warmup 100 --hear-weight 1 --hear-delay 2 \
                --threads "$threads" --checkpoint-every 100 --log-every 25 --eval-every 250 \
                --no-progress "${hears[@]}" "${lm_extra[@]}"
            ;;
        decoder)
            codec_for_lm
            train codec --data "$run_dir/data/train" --eval-data "$run_dir/data/eval" \
                --decoder-only "$lm_codec" --out "$run_dir/codec-decoder" \
                --device "$device" --seed "$seed" --steps "${DECODER_STEPS:-1500}" \
                --batch-size 32 --segment 1.2 --max-hours 6 --warmup 100 --lr 5e-4 \
                --threads "$threads" --checkpoint-every 200 --log-every 50 --eval-every 250 \
                --no-progress
            ;;
        keep)
            if [ "$run_codec/codec.safetensors" -nt "$kept/codec/codec.safetensors" ]; then
                mkdir -p "$kept/codec"
                # fp16, as `export` ships it
                convert "$run_codec/codec.safetensors" "$kept/codec/codec.safetensors" float16
                for file in codec.json phonemes.json log.jsonl; do
                    [ ! -f "$run_codec/$file" ] || cp "$run_codec/$file" "$kept/codec/"
                done
            fi
            find_teacher
            if [ "$teacher" != "$kept/teacher" ] && [ -f "$teacher/teacher.safetensors" ]; then
                mkdir -p "$kept/teacher"
                convert "$teacher/teacher.safetensors" "$kept/teacher/teacher.safetensors" float16
                cp "$teacher"/{teacher.json,phonemes.json,log.jsonl} "$kept/teacher/"
            fi
            if [ "$tokenizer" != "$kept/tokenizer" ]; then
                mkdir -p "$kept/tokenizer"
                cp "$tokenizer"/tokenizer.model "$tokenizer"/tokenizer.vocab "$kept/tokenizer/"
            fi
            if [ -f "$run_dir/lm/lm.safetensors" ]; then
                run_lm
                mkdir -p "$kept/lm"
                convert "$lm_weights/lm.safetensors" "$kept/lm/lm.safetensors" bfloat16
                cp "$lm_weights/config.json" "$kept/lm/"
                [ ! -f "$run_dir/lm/log.jsonl" ] || cp "$run_dir/lm/log.jsonl" "$kept/lm/"
                rm -f "$kept/lm/best.json"
                [ ! -f "$lm_weights/best.json" ] || cp "$lm_weights/best.json" "$kept/lm/"
            fi
            du -sh "$kept"/*
            ;;
        export)
            codec_for_lm
            codec_run="$lm_codec"
            [ -f "$run_dir/codec-decoder/codec.safetensors" ] && codec_run="$run_dir/codec-decoder"
            run_lm
            lm_run="$lm_weights"
            [ -f "$lm_run/lm.safetensors" ] || lm_run="$kept/lm"
            [ -f "$run_dir/lm-hear/lm.safetensors" ] && lm_run="$run_dir/lm-hear"
            echo "export: codec from $codec_run, LM from $lm_run"
            train export --codec "$codec_run" --lm "$lm_run" \
                --tokenizer "$tokenizer" --out "$assets"
            ;;
        eval)
            OMP_NUM_THREADS=${EVAL_THREADS:-$threads} train eval --assets "$assets" \
                --data "$run_dir/data/eval" --count "${EVAL_DIALOGUES:-300}" \
                --device "$device" --json "$run_dir/eval.json" --fdb-out "$run_dir/fdb" \
                --batch "${EVAL_BATCH:-8}" ${AGAINST:+--against "$AGAINST"}
            ;;
        fdb)
            "$py" -m app.cli eval "$run_dir/fdb" --out "$run_dir/fdb-eval" --no-timeline
            ;;
        bench)
            "$py" -m app.cli bench --lm demo --codec demo --threads "$threads" --no-reference \
                --frames 200 --json "$run_dir/bench.json"
            ;;
        card)
            train card --run "$run_dir" --assets "$assets" \
                --data-time "${DATA_TIME:-see RUN_DIR/data-train.log}" \
                ${LINEAGE:+--lineage "$LINEAGE"}
            ;;
        *)
            echo "train_demo: unknown stage $stage (see the top of this file)" >&2
            exit 2
            ;;
    esac
done
