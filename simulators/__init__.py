"""o2chain simulators: oxygen equipment, sensor wires, fleets and faults."""
