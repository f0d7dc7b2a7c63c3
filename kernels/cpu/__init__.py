"""C kernels for CPUs, built on first use (build.py); each has a torch twin in kernels/torch."""
