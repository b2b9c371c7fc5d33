"""Generated gRPC code for the node service API (see proto/)."""
