"""Host <-> microcontroller serial protocol, bridge, reference firmware and simulator."""
