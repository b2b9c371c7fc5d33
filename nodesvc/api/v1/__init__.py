"""Generated from proto/nodesvc/v1 by scripts/gen-proto; do not edit."""
