"""`antiphon talk`: a conversation through this machine's microphone and speaker, with the
model here or on an `antiphon serve` node, in a terminal UI or printed (app/talk/cli.py)."""
