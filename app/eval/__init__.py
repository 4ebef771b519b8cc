"""`antiphon eval`: recorded conversations (recordings, Full-Duplex-Bench folders) scored:
who spoke when, turn-taking, the inner monologue against the audio, the runtime's figures
(docs/evaluation.md)."""
