"""Stage 2, sources: Microsoft Graph (delta rounds over users, groups, contacts) and Exchange
Online (a snapshot source: no delta, read in full each run). Each implements the source
interface of ``shared/sources/base.py``: it hands directory entries to a sink in arrival order
and returns what its complete read says (``SourceRead``); a read that cannot complete raises.
``shared/sources/configured.py`` builds the snapshot sources the settings turn on, so the
reading stage runs them beside Graph without naming any."""
