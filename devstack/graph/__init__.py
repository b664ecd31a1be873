"""The Graph emulator, one module per concern; ``devstack.graph_emulator`` is its public entry."""
