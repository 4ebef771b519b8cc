"""read_audio / write_wav on real files of several formats, rates and channel counts."""

from pathlib import Path

import numpy as np
import pytest
import soundfile

from audio_io.errors import AudioFileError
from audio_io.files import read_audio, write_wav

from .conftest import dominant_frequency, tone


def test_stereo_8khz_is_mixed_down_and_resampled(tmp_path: Path) -> None:
    left = tone(440, 1.0, 8000)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)  # right channel silent
    path = tmp_path / "stereo8k.wav"
    soundfile.write(path, stereo, 8000, subtype="PCM_16")
    audio = read_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == 24000
    assert dominant_frequency(audio, 24000) == pytest.approx(440, abs=2)
    assert np.abs(audio[2400:-2400]).max() == pytest.approx(0.25, abs=0.01)  # mean of L and R


def test_mono_48khz_is_resampled(tmp_path: Path) -> None:
    path = tmp_path / "mono48k.wav"
    soundfile.write(path, tone(1000, 0.5, 48000), 48000, subtype="FLOAT")
    audio = read_audio(path, sample_rate=24000)
    assert len(audio) == 12000
    assert dominant_frequency(audio, 24000) == pytest.approx(1000, abs=2)


def test_24khz_is_read_unchanged(tmp_path: Path) -> None:
    original = tone(300, 0.25, 24000)
    path = tmp_path / "same.wav"
    soundfile.write(path, original, 24000, subtype="FLOAT")
    np.testing.assert_array_equal(read_audio(path), original)


@pytest.mark.parametrize(
    ("suffix", "format", "subtype"),
    [(".flac", "FLAC", "PCM_16"), (".ogg", "OGG", "VORBIS"), (".mp3", "MP3", "MPEG_LAYER_III")],
)
def test_compressed_formats(tmp_path: Path, suffix: str, format: str, subtype: str) -> None:
    if format not in soundfile.available_formats():
        pytest.skip(f"this libsndfile cannot write {format}")
    path = tmp_path / f"tone{suffix}"
    soundfile.write(path, tone(440, 1.0, 44100), 44100, format=format, subtype=subtype)
    audio = read_audio(path)
    assert len(audio) == pytest.approx(24000, abs=1200)  # MP3 pads with encoder delay
    assert dominant_frequency(audio, 24000) == pytest.approx(440, abs=3)


def test_multichannel_is_averaged(tmp_path: Path) -> None:
    channels = np.stack([np.full(2400, v, np.float32) for v in (0.1, 0.2, 0.3, 0.6)], axis=1)
    path = tmp_path / "quad.wav"
    soundfile.write(path, channels, 24000, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(path), 0.3, atol=1e-6)


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.wav"
    with pytest.raises(AudioFileError, match="nowhere.wav does not exist"):
        read_audio(path)


def test_a_device_is_not_called_missing() -> None:
    with pytest.raises(AudioFileError, match="/dev/null is not a regular file"):
        read_audio("/dev/null")


def test_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError, match="is a folder"):
        read_audio(tmp_path)


def test_text_renamed_wav_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("these are not samples\n" * 20)
    with pytest.raises(AudioFileError, match="cannot read .*notes.wav as audio"):
        read_audio(path)


def test_corrupt_wav_is_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    soundfile.write(good, tone(440, 0.1, 24000), 24000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(good.read_bytes()[:12] + bytes(range(256)) * 4)  # RIFF header, then junk
    with pytest.raises(AudioFileError, match="corrupt.wav"):
        read_audio(corrupt)


def test_empty_wav_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros(0, np.float32), 24000)
    with pytest.raises(AudioFileError, match="empty.wav holds no audio"):
        read_audio(path)


def test_write_wav_round_trips_mono_and_stereo(tmp_path: Path) -> None:
    mono = tone(440, 0.1, 24000)
    write_wav(tmp_path / "mono.wav", mono, 24000)
    read, rate = soundfile.read(tmp_path / "mono.wav", dtype="float32")
    assert rate == 24000 and soundfile.info(tmp_path / "mono.wav").subtype == "PCM_16"
    np.testing.assert_allclose(read, mono, atol=1 / 32768)
    stereo = np.stack([mono, -mono], axis=1)
    write_wav(tmp_path / "stereo.wav", stereo, 24000, subtype="FLOAT")
    read, _ = soundfile.read(tmp_path / "stereo.wav", dtype="float32")
    np.testing.assert_array_equal(read, stereo)


def test_write_wav_clips(tmp_path: Path) -> None:
    path = tmp_path / "loud.wav"
    write_wav(path, np.array([1.5, -3.0, 0.5], np.float32), 24000, subtype="FLOAT")
    read, _ = soundfile.read(path, dtype="float32")
    np.testing.assert_array_equal(read, [1.0, -1.0, 0.5])


def test_write_wav_into_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError, match="cannot write .*out.wav"):
        write_wav(tmp_path / "no" / "such" / "out.wav", np.zeros(10, np.float32), 24000)
