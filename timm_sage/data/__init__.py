"""Data: the idx reader (Fashion-MNIST), dataset statistics, the saliency cache."""
