"""Stage 1, settings: the app settings (docs/sync-rules.md) read into one plain ``Settings``,
and the credentials and secrets they name."""
