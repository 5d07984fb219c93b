"""Development tools for edge-asd: synthetic machine audio and faults, building the log-mel
model. Shipped beside the runtime package but never imported by it."""
