"""The simulator: algorithms on virtual ranks (execute.py), trace replay (replay.py), cost models (network.py, profile.py)."""
