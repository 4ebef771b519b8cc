"""The MQTT side of antiphon: the protocol (topics, audio frames, JSON messages) and the broker
connection that `antiphon serve` and `antiphon talk --remote` share. Imports `model` only."""
