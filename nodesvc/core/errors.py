"""Domain errors: what went wrong in the caller's terms. The server maps each class to one
gRPC status code in one place (nodesvc.server.errors); the core never imports grpc."""


class DomainError(Exception):
    """Base class; the message is shown to the caller as is, so make it say what to fix."""


class InvalidSpec(DomainError):
    """The request or VM spec is malformed; nothing was created or changed."""

    def __init__(self, field: str, msg: str):
        super().__init__(f"{field}: {msg}" if field else msg)
        self.field = field


class NotFound(DomainError):
    """No such VM (or device of a VM)."""


class AlreadyExists(DomainError):
    """A VM with that id exists already."""


class WrongState(DomainError):
    """The VM (or host) is not in a state that allows the operation."""


class Exhausted(DomainError):
    """The host cannot fit the VM (memory or vCPUs), or a consumer fell too far behind."""


class OutOfRange(DomainError):
    """A resume point is older than the retained history."""


class Unsupported(DomainError):
    """A feature this node does not provide (yet), e.g. a device kind without a plugin."""


class VmmInternalError(Exception):
    """A VMM process hit a bug while running an action. Deliberately not a DomainError:
    it is reported as an internal error, never as the caller's mistake."""
