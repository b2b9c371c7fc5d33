"""Health, server reflection (as grpcurl uses it), mutual TLS on TCP, plaintext refusal."""

import datetime
import socket
import subprocess
import sys

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase)

from nodesvc.api.v1 import nodesvc_pb2 as pb
from nodesvc.api.v1 import nodesvc_pb2_grpc as pb_grpc
from tests.service.conftest import ROOT

SERVICE = "nodesvc.v1.NodeService"


def test_health_reports_serving(shared_server):
    stub = health_pb2_grpc.HealthStub(shared_server.channel)
    for name in ("", SERVICE):
        r = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as ei:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_service(shared_server):
    stub = reflection_pb2_grpc.ServerReflectionStub(shared_server.channel)
    reqs = [reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)]
    listed, described = list(stub.ServerReflectionInfo(iter(reqs), timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names
    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in described.file_descriptor_response.file_descriptor_proto]
    svc = next(s for f in files if f.package == "nodesvc.v1" for s in f.service)
    assert {"CreateVm", "WatchVms", "AttachConsole", "GetNodeInfo"} <= {m.name for m in svc.method}

    # What grpcurl does next: build a descriptor pool from the server and resolve a method.
    from google.protobuf.descriptor_pool import DescriptorPool
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(shared_server.channel))
    method = pool.FindServiceByName(SERVICE).FindMethodByName("CreateVm")
    assert method.input_type.fields_by_name["spec"].message_type.full_name == "nodesvc.v1.VmSpec"


# --- mutual TLS ----------------------------------------------------------------------------

def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer, issuer_key, *, ca=False, san=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(obj):
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in
            ("ca", "server", "client", "rogue_ca", "rogue")}
    ca = _cert("test-ca", keys["ca"], "test-ca", keys["ca"], ca=True)
    rogue_ca = _cert("rogue-ca", keys["rogue_ca"], "rogue-ca", keys["rogue_ca"], ca=True)
    import ipaddress
    certs = {
        "ca": ca,
        "server": _cert("localhost", keys["server"], "test-ca", keys["ca"],
                        san=[x509.DNSName("localhost"),
                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        "client": _cert("control-plane", keys["client"], "test-ca", keys["ca"]),
        "rogue": _cert("control-plane", keys["rogue"], "rogue-ca", keys["rogue_ca"]),
    }
    del rogue_ca
    out = {}
    for n, c in certs.items():
        (d / f"{n}.pem").write_bytes(_pem(c))
        out[n] = _pem(c)
        if n in keys:
            (d / f"{n}.key").write_bytes(_pem(keys[n]))
            out[f"{n}.key"] = _pem(keys[n])
    out["dir"] = d
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_info(target, creds):
    with grpc.secure_channel(target, creds,
                             options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
        return pb_grpc.NodeServiceStub(ch).GetNodeInfo(pb.GetNodeInfoRequest(), timeout=5)


def test_mtls_accepts_only_clients_with_a_valid_certificate(make_server, pki):
    port = _free_port()
    d = pki["dir"]
    make_server("--listen", f"127.0.0.1:{port}", "--tls-cert", str(d / "server.pem"),
                "--tls-key", str(d / "server.key"), "--tls-client-ca", str(d / "ca.pem"))
    target = f"127.0.0.1:{port}"
    good = grpc.ssl_channel_credentials(pki["ca"], pki["client.key"], pki["client"])
    assert _node_info(target, good).cpus >= 1
    for creds in (grpc.ssl_channel_credentials(pki["ca"]),     # no client certificate
                  grpc.ssl_channel_credentials(pki["ca"], pki["rogue.key"], pki["rogue"])):
        with pytest.raises(grpc.RpcError) as ei:
            _node_info(target, creds)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(target) as ch:   # plaintext against the TLS port
        with pytest.raises(grpc.RpcError):
            pb_grpc.NodeServiceStub(ch).GetNodeInfo(pb.GetNodeInfoRequest(), timeout=5)


@pytest.mark.parametrize("args,message", [
    (["--listen", "127.0.0.1:1"], "refusing to serve plaintext TCP"),
    (["--listen", "127.0.0.1:1", "--tls-cert", "c.pem"], "go together"),
])
def test_bad_transport_options_exit_2(state_dir, args, message):
    r = subprocess.run([sys.executable, "-m", "nodesvc.server.main", "serve",
                        "--state-dir", state_dir, *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_one_node_service_per_state_dir(make_server, state_dir):
    make_server()
    r = subprocess.run([sys.executable, "-m", "nodesvc.server.main", "serve",
                        "--state-dir", state_dir, "--socket", f"{state_dir}/other.sock"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "another node service" in r.stderr, r.stderr
