"""Stage 3, the model: the records (dataset names, typed records, API conversion), address
syntax, the directory cache the sources merge into, the rules and the projection to records."""
