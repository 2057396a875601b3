"""The PRISM node agent (`prism node up`): runs models on this machine for the control plane."""

__version__ = "0.1.0"
