"""Physics models of oxygen equipment and rooms (deterministic with a seed, clock passed in)."""
