"""The hardware the core is handed: GPIO relays and inputs, the firmware backstop, a simulated microcontroller."""
