"""Virtual devices: each module owns its state, its hypercall handlers and their checks."""
