"""Local stack for tests, the demo and the benchmarks (Graph emulator, sync API receiver, tenants)."""
