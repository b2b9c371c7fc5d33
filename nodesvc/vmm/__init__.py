"""The VMM core: KVM bindings, guest memory, x86_64 boot, vCPUs, buses, event loop.

This package must stay lean: it never imports grpc or OpenTelemetry exporters.
"""
