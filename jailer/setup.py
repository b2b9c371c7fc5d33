# The SIGSYS reporter must be C (a Python signal handler runs later, on the main thread).
from setuptools import Extension, setup

setup(ext_modules=[Extension("nodesvc_jailer._sigsys", ["nodesvc_jailer/_sigsys.c"],
                             extra_compile_args=["-O2", "-Wall"])])
