"""Small C++ CPU kernels built on first use with ``torch.utils.cpp_extension.load_inline``."""
