"""Helpers shared by the tests (no tests here): tiny models and folders, data, run launchers, simulations."""
