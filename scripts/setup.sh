#!/usr/bin/env bash
# The one setup script (README, CI): a virtual environment at .venv with antiphon installed
# editable.
#
#   bash scripts/setup.sh          # to run antiphon: torch + antiphon[hf]
#   bash scripts/setup.sh --eval   # + `antiphon eval`'s silero-vad (--no-deps) and matplotlib
#   bash scripts/setup.sh --train  # to train the demo model: + the speech synthesizers
#                                  # (espeak-ng, flite, festival and its English voices)
#   bash scripts/setup.sh --dev    # to develop and test: all of the above + pytest, ruff, mypy,
#                                  # einops, the reference moshi package (test-only, --no-deps)
#
# Idempotent: a second run with nothing changed only checks and returns in about a second.
# PYTHON picks the interpreter that creates the venv (default python3, must be >= 3.11).
set -euo pipefail

TORCH_VERSION=2.13.0   # pinned: this resolves to a local CPU build; unpinned pulls GB of CUDA
MOSHI_VERSION=0.2.13   # the reference implementation the parity tests compare against
SILERO_VAD_VERSION=6.2.3  # voice activity for `antiphon eval`; its model ships in the wheel

dev=0
eval_extra=0
train_extra=0
for arg in "$@"; do
    case "$arg" in
        --dev) dev=1; eval_extra=1; train_extra=1 ;;
        --eval) eval_extra=1 ;;
        --train) train_extra=1; eval_extra=1 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
venv="$repo/.venv"
py="$venv/bin/python"
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
pip_quiet=(--quiet)
[ "${CI:-}" = "true" ] && pip_quiet+=(--progress-bar off)

say() { echo "setup: $*"; }

# 0. Debian packages: PortAudio for sound devices; with --dev also what the tests talk to for
#    real: a JACK server (dummy backend), espeak-ng speech, the mosquitto broker. Installed only
#    where missing, and only as root (or with sudo); otherwise the command is printed.
system_packages=(libportaudio2)
[ "$train_extra" = 1 ] && system_packages+=(espeak-ng flite festival festvox-kallpc16k
    festvox-kdlpc16k festvox-us-slt-hts)
[ "$dev" = 1 ] && system_packages+=(jackd2 mosquitto openssl)
missing=()
if command -v dpkg-query >/dev/null; then
    for package in "${system_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$package")
    done
fi
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=()
    [ "$(id -u)" != 0 ] && command -v sudo >/dev/null && sudo=(sudo)
    if [ "$(id -u)" = 0 ] || [ "${#sudo[@]}" -gt 0 ]; then
        say "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # jackd2 asks whether to allow realtime priority; the tests run it with --no-realtime
        echo "jackd2 jackd/tweak_rt_limits boolean false" | "${sudo[@]}" debconf-set-selections
        "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq \
            --no-install-recommends "${missing[@]}"
    else
        say "missing Debian packages (install them as root): apt-get install ${missing[*]}"
    fi
fi

# 1. the virtual environment
if [ -x "$py" ] && "$py" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    say "using existing $venv ($("$py" --version))"
else
    python=${PYTHON:-python3}
    if ! "$python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
        echo "setup: $python is missing or older than Python 3.11; set PYTHON=python3.11" >&2
        exit 1
    fi
    [ -e "$venv" ] && say "removing unusable $venv"
    rm -rf "$venv"
    say "creating $venv with $("$python" --version)"
    "$python" -m venv "$venv"
fi
pip=("$py" -m pip)

installed_version() {  # prints the installed version of a distribution, or nothing
    "$py" -c 'import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass' "$1"
}

# 2. torch first, pinned, so that nothing later resolves an unpinned (CUDA) torch
if [[ "$(installed_version torch)" == "$TORCH_VERSION"* ]]; then
    say "torch $(installed_version torch) already installed"
else
    say "installing torch==$TORCH_VERSION"
    "${pip[@]}" install "${pip_quiet[@]}" "torch==$TORCH_VERSION"
fi

# 3. silero-vad before the extras that name it: --no-deps, since its metadata asks for torch
#    (and torchaudio in its extras); what it imports is torch and packaging (from [eval])
if [ "$eval_extra" = 1 ]; then
    if [ "$(installed_version silero-vad)" = "$SILERO_VAD_VERSION" ]; then
        say "silero-vad $SILERO_VAD_VERSION already installed"
    else
        say "installing silero-vad==$SILERO_VAD_VERSION (--no-deps)"
        "${pip[@]}" install "${pip_quiet[@]}" --no-deps "silero-vad==$SILERO_VAD_VERSION"
    fi
fi

# 4. antiphon itself, editable, with its extras; skipped when pyproject.toml is unchanged
extras=hf
[ "$eval_extra" = 1 ] && extras=eval,hf
[ "$dev" = 1 ] && extras=dev,eval,hf
stamp="$venv/.antiphon-setup"
want="$extras $(sha256sum pyproject.toml | cut -d' ' -f1) $repo"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -n "$(installed_version antiphon)" ]; then
    say "antiphon[$extras] already installed (pyproject.toml unchanged)"
else
    say "installing antiphon[$extras] (editable)"
    "${pip[@]}" install "${pip_quiet[@]}" -e ".[$extras]"
    echo "$want" > "$stamp"
fi

# 5. the reference moshi package: test-only; --no-deps keeps its torch<2.10 pin from replacing
#    torch (its imports, einops safetensors sentencepiece numpy huggingface_hub, come from [dev,hf])
if [ "$dev" = 1 ]; then
    if [ "$(installed_version moshi)" = "$MOSHI_VERSION" ]; then
        say "reference moshi $MOSHI_VERSION already installed"
    else
        say "installing reference moshi==$MOSHI_VERSION (--no-deps, test-only)"
        "${pip[@]}" install "${pip_quiet[@]}" --no-deps "moshi==$MOSHI_VERSION"
    fi
fi

if [[ "$(installed_version torch)" != "$TORCH_VERSION"* ]]; then
    echo "setup: torch is $(installed_version torch), expected $TORCH_VERSION" >&2
    exit 1
fi
say "done: torch $(installed_version torch), antiphon $(installed_version antiphon) in $venv"
