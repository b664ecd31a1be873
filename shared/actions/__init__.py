"""The stages of one run, as parts of the engine's run (``shared/engine.py`` sequences them):
``reads`` (the provisioned domains, the Graph and Exchange Online reads, the service's copy),
``update`` (the plan, the deletion guard, the update), ``preview`` (``test-update``) and
``replace`` (``replace`` and ``refresh``)."""
