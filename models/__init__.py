"""The secondary models (quadratic curve fit, MNIST MLP, LeNet-5): training, export and loading."""
