"""One etcd member, one node service, one controller: the controller drives the node over
TCP with mutual TLS (the node's --listen with --tls-*, the controller's --node-tls-*); a
node service restarted within its lease keeps its VMs."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil

import pytest

from nodesvc.fleet.ops import Fleet

from .cluster import Controller, EtcdCluster, FleetNode, free_ports, tiny_spec, wait_for

pytestmark = pytest.mark.kvm


def make_pki(d) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("ca", "node", "ctl")}

    def cert(cn, key, ca=False, san=None):
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name("fleet-ca"))
             .public_key(keys[key].public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(hours=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(keys["ca"], hashes.SHA256())
    certs = {"ca": cert("fleet-ca", "ca", ca=True),
             "node": cert("node", "node", san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
             "ctl": cert("controller", "ctl")}
    out = {}
    for n, c in certs.items():
        out[n] = str(d / f"{n}.pem")
        (d / f"{n}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
        out[f"{n}.key"] = str(d / f"{n}.key")
        (d / f"{n}.key").write_bytes(keys[n].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return out


def test_controller_drives_a_node_over_mtls(tmp_path):
    if not shutil.which("etcd") or not shutil.which("etcdctl"):
        pytest.skip("etcd is not installed (Debian etcd-server)")
    if os.geteuid() != 0 or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs root and /dev/kvm")
    if not shutil.which(os.environ.get("GUEST_CC") or "gcc"):
        pytest.skip("gcc is not installed: cannot build the tiny guests")
    pytest.importorskip("cryptography", reason="the test extra (cryptography) makes the PKI")
    from tests.guests.build import build_guest
    kernel = str(build_guest("idle"))
    pki = make_pki(tmp_path)
    port = free_ports(1)[0]
    etcd = EtcdCluster(size=1).start()
    node = ctl = None
    try:
        node = FleetNode("tls-1", etcd, memory_mib=256, labels={}, extra=(
            "--listen", f"127.0.0.1:{port}", "--tls-cert", pki["node"], "--tls-key",
            pki["node.key"], "--tls-client-ca", pki["ca"], "--advertise",
            f"127.0.0.1:{port}")).start()
        ctl = Controller("tls-ctl", etcd, log_dir=str(tmp_path), extra=(
            "--node-tls-ca", pki["ca"], "--node-tls-cert", pki["ctl"], "--node-tls-key",
            pki["ctl.key"])).start()

        async def run(fn):
            async with Fleet(etcd.endpoints) as f:
                return await fn(f)
        wait_for(lambda: any(n.record for n in asyncio.run(run(lambda f: f.nodes()))), 30,
                 "node registered")
        asyncio.run(run(lambda f: f.create("tls-vm", tiny_spec(kernel))))
        got = wait_for(lambda: (v := asyncio.run(run(lambda f: f.get("tls-vm")))).state ==
                       "RUNNING" and v, 60, "tls-vm RUNNING")
        assert got.node == "tls-1"
        assert asyncio.run(run(lambda f: f.nodes()))[0].record.endpoint == f"127.0.0.1:{port}"
    finally:
        if ctl:
            ctl.kill()
        if node:
            node.stop()
        etcd.stop()


def test_node_restart_within_its_lease_keeps_its_vms(tmp_path):
    """VMs outlive the node service; in a fleet the restarted service resumes its lease
    (<state-dir>/fleet/lease.json), so nothing is fenced or moved."""
    if not shutil.which("etcd") or not shutil.which("etcdctl"):
        pytest.skip("etcd is not installed (Debian etcd-server)")
    if os.geteuid() != 0 or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs root and /dev/kvm")
    if not shutil.which(os.environ.get("GUEST_CC") or "gcc"):
        pytest.skip("gcc is not installed: cannot build the tiny guests")
    import signal
    from tests.guests.build import build_guest
    kernel = str(build_guest("idle"))
    etcd = EtcdCluster(size=1).start()
    node = ctl = None

    def run(fn):
        async def go():
            async with Fleet(etcd.endpoints) as f:
                return await fn(f)
        return asyncio.run(go())
    try:
        # A long lease, so the restart surely fits in it on a loaded host.
        node = FleetNode("r1", etcd, memory_mib=256, labels={}, ttl=20).start()
        ctl = Controller("ctl", etcd, log_dir=str(tmp_path)).start()
        wait_for(lambda: any(n.record for n in run(lambda f: f.nodes())), 30, "registered")
        run(lambda f: f.create("keep-1", tiny_spec(kernel)))
        before = wait_for(lambda: (v := run(lambda f: f.get("keep-1"))).state == "RUNNING"
                          and v, 60, "keep-1 RUNNING")
        lease = run(lambda f: f.nodes())[0].record.lease
        pids = node.vmm_pids()
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(20) == 0
        node.start()
        wait_for(lambda: "resumed lease" in node.log_text(), 30, "the lease resumed")
        assert run(lambda f: f.nodes())[0].record.lease == lease
        after = run(lambda f: f.get("keep-1"))
        assert (after.node, after.status.assignment) == (before.node, before.status.assignment)
        assert node.vmm_pids() == pids      # the same VMM, re-adopted
    finally:
        if ctl:
            ctl.kill()
        if node:
            node.stop()
        etcd.stop()
