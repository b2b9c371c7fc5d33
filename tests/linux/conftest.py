"""Real Linux boots of the default guest (about 20-60 s each on nested KVM).

The `guest_kernel` fixture lives in tests/conftest.py.
"""
