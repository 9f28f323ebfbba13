"""Training methods as peers: each one is a Mode of the trainer's step loop (prune, cpt, dress)."""
