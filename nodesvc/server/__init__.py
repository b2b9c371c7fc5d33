"""The gRPC face of the node service: `nodesvc serve` (main.py), the server set-up (app.py),
thin servicers (servicer.py, convert.py) and the one domain-error mapping (errors.py)."""
