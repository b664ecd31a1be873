"""Stage 2, sources: Microsoft Graph (delta rounds over users, groups, contacts) and Exchange
Online; each yields directory entries in arrival order and says whether its read was complete."""
