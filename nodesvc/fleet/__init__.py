"""Fleets on etcd: node registration under leases, placement, failover with fencing, and
HA controllers (docs/fleet.md).

    nodesvc serve --fleet-etcd 10.0.0.1:2379,... --node-name n1 --advertise n1:7443 ...
    nodesvc-fleet controller --etcd 10.0.0.1:2379,...
    nodectl fleet create -f vm.yaml --id web-1 ; nodectl fleet ls ; nodectl fleet drain n1
"""
