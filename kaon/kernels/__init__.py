"""Small C++ CPU kernels, built once per install with ``torch.utils.cpp_extension.load_inline``
(``cpp_build``) when the engine loads."""
