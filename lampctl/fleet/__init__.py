"""The MQTT fleet: a node's link, outbox and commands, Home Assistant discovery, and the collector's central log."""
