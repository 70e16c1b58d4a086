"""LeNet-5 (LeCun et al., 1998) as an nnlab network: `nnlab train model=lenet`."""
