"""`antiphon run`: audio files, or a Full-Duplex-Bench tree, streamed through the model offline,
as fast as the machine goes."""
