"""Worked examples of extending nnlab without editing it (docs/extending.md); tests/test_examples.py keeps them
working."""
