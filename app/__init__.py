"""antiphon application: CLI, runtime, TUI, headless server, recording, evaluation."""
