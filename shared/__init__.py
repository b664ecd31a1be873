"""Entra ID → email-security directory sync engine.

One run flows one way: settings → Graph read → projection → diff against the
change-tracking state → sync API → state. Each stage is a module with a plain-data
interface; ``function_app.py`` and ``python -m shared`` are two doors into ``engine.run``.
"""

__version__ = "1.0.0"
