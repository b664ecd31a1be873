"""Entra ID → email-security directory sync engine.

One run flows one way: settings → Graph read → projection → diff against the
change-tracking state → sync API → state. Each stage is a module with a plain-data
interface; three doors reach ``engine.perform``: the timer (``function_app.py``), the operator
endpoints (``operator_endpoints.py``) and the command line (``python -m shared``).
"""

__version__ = "1.0.0"
