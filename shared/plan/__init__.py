"""Stage 4, the plan: the diff of projection against state into batches, the deletion guard
and the approval of held deletions."""
