"""Reference lamp firmware: MicroPython logic for a Raspberry Pi Pico, importable on CPython."""
