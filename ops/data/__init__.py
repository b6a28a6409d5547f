"""Data: datasets (CIFAR, ImageNet, Fashion-MNIST, synthetic), in-memory loaders, corruptions and -C/-P sets."""
