"""`antiphon serve`: the headless node that serves many conversations on one model over MQTT
(docs/serve.md). Never imports textual: a GPU box has no terminal UI."""
