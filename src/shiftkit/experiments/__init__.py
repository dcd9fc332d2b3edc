"""Named experiments: each file defines a set of runs and how to present them."""
