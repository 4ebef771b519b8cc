#!/usr/bin/env bash
# Prepares .gpu/: what a GPU machine with no network and no espeak-ng needs to train the demo
# model (docs/demo-model.md). Run it here, on a machine with the registries and Debian's
# espeak-ng, then carry .gpu to the GPU machine, where scripts/train_demo.sh uses it.
#
#   .gpu/wheels/     soundfile, soxr, cffi, pycparser for CPython 3.12 on x86-64 (the GPU
#                    image's Python; its torch, numpy, sentencepiece, safetensors and tqdm are
#                    used as they are)
#   .gpu/espeak/lib/ libespeak-ng.so.1 and the libraries it loads, less glibc's own
#   .gpu/espeak/espeak-ng-data/   the English part of espeak-ng's data
#
# About 13 MB. PYTHON_VERSION picks another target Python (default 3.12).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=.gpu
python_version=${PYTHON_VERSION:-3.12}
pip=(.venv/bin/python -m pip)
[ -x .venv/bin/python ] || pip=(python3 -m pip)

version() { "${pip[0]}" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1"; }

rm -rf "$out"
mkdir -p "$out/wheels" "$out/espeak/lib" "$out/espeak/espeak-ng-data"
"${pip[@]}" download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version "$python_version" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$out/wheels" \
    "soundfile==$(version soundfile)" "soxr==$(version soxr)" \
    "cffi==$(version cffi)" "pycparser==$(version pycparser)"

library=$(ldconfig -p | awk '/libespeak-ng\.so\.1 / {print $NF; exit}')
if [ -z "$library" ]; then
    echo "gpu_bundle: libespeak-ng.so.1 not found: apt-get install espeak-ng" >&2
    exit 1
fi
cp -L "$library" "$out/espeak/lib/libespeak-ng.so.1"
# Its dependencies, but never glibc's (the GPU machine's own must be used).
ldd "$library" | awk '/=> \// {print $1, $3}' | while read -r name path; do
    case "$name" in
        libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*) continue ;;
    esac
    cp -L "$path" "$out/espeak/lib/$name"
done

data=$(dirname "$library")/espeak-ng-data
for item in phontab phonindex phondata intonations en_dict voices lang; do
    cp -r "$data/$item" "$out/espeak/espeak-ng-data/"
done

# Check: the bundle speaks, with its own library and data.
LD_LIBRARY_PATH="$out/espeak/lib" ANTIPHON_ESPEAK_LIBRARY="$out/espeak/lib/libespeak-ng.so.1" \
    ESPEAK_DATA_PATH="$out/espeak" "${pip[0]}" -c '
from app.train.speech import speak, Voice
u = speak("Seven plus five is twelve.", Voice("en-us", "f3"))
assert len(u.words) == 5 and u.duration > 1, u.words
'
du -sh "$out"
