"""`antiphon train`: everything that makes the bundled demo model, from synthetic dialogues to
the exported files (docs/demo-model.md). Runs as `python -m app.train` too, without the rest of
the app (a training machine needs no sound devices)."""
