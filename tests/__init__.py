"""dgsnet's tests, a package so that shared helpers import by their full name
(`from tests.surgery.fused_cases import ...`) under `python -m pytest` from the repo root."""
