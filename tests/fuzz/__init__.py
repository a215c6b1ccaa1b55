"""Hostile-input fuzzing of the live server (hypothesis): see conftest.py for the profiles."""
