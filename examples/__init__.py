"""Worked examples of extending nnlab without editing it (README, Extending); tests/test_examples.py keeps them
working."""
