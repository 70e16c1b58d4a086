"""Train and test one model, or sweep with -m: `python train.py model=cnn` (nnlab.train; installed, the same
command is `nnlab train model=cnn`)."""

from nnlab.train import main

if __name__ == "__main__":
    main()
