"""A run's life around the training nnlab.app builds: see nnlab.run.lifecycle."""
