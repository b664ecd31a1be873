"""Stage 5, the target: the adapter that speaks the email-security directory sync API
(docs/sync-api.md)."""
