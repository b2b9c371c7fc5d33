"""The checked-in generated code matches proto/ (regenerated into a temporary directory)."""

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "nodesvc" / "api" / "v1"


def test_generated_code_is_fresh(tmp_path):
    subprocess.run([str(ROOT / "scripts" / "gen-proto"), str(tmp_path)], check=True,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    names = ["nodesvc_pb2.py", "nodesvc_pb2.pyi", "nodesvc_pb2_grpc.py"]
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, GENERATED, names, shallow=False)
    assert not mismatch and not errors, (
        f"stale generated code {mismatch + errors}: run scripts/gen-proto and commit the result")


def test_generated_code_imports_as_a_package():
    from nodesvc.api.v1 import nodesvc_pb2, nodesvc_pb2_grpc
    assert nodesvc_pb2.DESCRIPTOR.package == "nodesvc.v1"
    assert nodesvc_pb2_grpc.nodesvc_dot_v1_dot_nodesvc__pb2 is nodesvc_pb2
