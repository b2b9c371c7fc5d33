"""Errors of the boot-layout code. All are configuration errors: they are raised
before the guest runs and their messages name the file or value at fault."""

from ..errors import ConfigError


class BootError(ConfigError):
    """The boot layout cannot be built (command line, memory size, vCPU count...)."""


class KernelLoadError(BootError):
    """The kernel image is unreadable, of an unknown format, or does not fit."""


class InitrdLoadError(BootError):
    """The initrd is unreadable or does not fit in guest RAM."""
