"""Triton kernels for masked attention/FFN ops, with PyTorch references and a dispatcher."""
