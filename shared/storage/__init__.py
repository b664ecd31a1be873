"""Stage 6, storage: the state (journal, positions, cache), the run lock and the run reports,
over ``file:`` or ``blob:``."""
