"""antiphon audio I/O: sound devices, audio files, resampling, re-framing."""
