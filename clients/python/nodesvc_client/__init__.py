"""Python client for the nodesvc node service (nodesvc.v1 over gRPC).

    from nodesvc_client import NodeClient, NodeError

    with NodeClient() as node:          # $NODESVC_TARGET, $NODESVC_SOCKET or the default socket
        vm = node.create_vm("web-1", spec_from_file("web.yaml"), start=True)

The messages are the generated `nodesvc.api.v1.nodesvc_pb2` ones (re-exported as `pb`),
typed by their checked-in .pyi. `nodectl` (nodesvc_client.cli) is the CLI on top.
"""

from nodesvc.api.v1 import nodesvc_pb2 as pb

from .aio import AsyncNodeClient
from .api import VmList
from .client import NodeClient
from .connect import DEFAULT_SOCKET, Tls
from .errors import NodeError, SpecError
from .spec import (create_request_from_dict, create_request_from_file, spec_from_dict,
                   spec_from_file)
from .streams import AsyncStream, Stream

__all__ = ["AsyncNodeClient", "AsyncStream", "DEFAULT_SOCKET", "NodeClient", "NodeError",
           "SpecError", "Stream", "Tls", "VmList", "create_request_from_dict",
           "create_request_from_file", "pb", "spec_from_dict", "spec_from_file"]
