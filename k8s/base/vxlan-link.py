"""Init container: the point-to-point VXLAN link between Alice's pod and natgw's pod.

On a flat pod network every pod reaches every other directly, so "Alice behind a NAT" needs a
private link: a unicast VXLAN tunnel (VNI 42, UDP 4789) between the two pod IPs, carrying the
lab's 10.10.1.0/24 (alice 10.10.1.10, natgw 10.10.1.1). The peer's pod IP comes from its headless
"-underlay" Service (publishNotReadyAddresses: true, so it resolves while the peer is still in its
own init container).

Environment:
  POD_IP              this pod's IP (downward API): the tunnel's local end
  PEER_HOST           DNS name of the peer's headless Service
  VXLAN_ADDRESS       this end's lab address, A.B.C.D/LEN
  VXLAN_ID, VXLAN_PORT  VNI and UDP port (42, 4789)
  LAB_GATEWAY         (alice) the NAT's lab address: traffic *from* VXLAN_ADDRESS is policy-routed
                      through it (table 110, rule priority 100). Traffic from the pod IP (kubelet
                      probes, the controller's gRPC, the tunnel itself) keeps the pod network's
                      routes, so probes work and nothing of the lab address leaks past the NAT.
  REQUIRE_IP_FORWARD  (natgw) fail unless net.ipv4.ip_forward is 1 in this pod (IPv4 settings of
                      a new network namespace are inherited from the node's; otherwise allow the
                      unsafe sysctl on the kubelet and set it in the pod's securityContext.sysctls)
  PEER_TIMEOUT        seconds to wait for the peer's name to resolve (default 300)

Uses pyroute2 (a pinhole dependency, in every pinhole image), so the image needs no iproute2.
Needs NET_ADMIN in the pod's network namespace. Idempotent: a restarted init container replaces
the link, the rule and the table.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time

from pyroute2 import IPRoute

LINK = "vxlan0"
LAB_TABLE = 110
LAB_RULE_PRIORITY = 100


def resolve(host: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.gethostbyname(host)
        except OSError as error:
            if time.monotonic() > deadline:
                sys.exit(f"vxlan-link: peer {host} did not resolve within {timeout:.0f}s: {error}")
            time.sleep(1)


def main() -> None:
    local = os.environ["POD_IP"]
    address = ipaddress.ip_interface(os.environ["VXLAN_ADDRESS"])
    vni = int(os.environ.get("VXLAN_ID", "42"))
    port = int(os.environ.get("VXLAN_PORT", "4789"))
    gateway = os.environ.get("LAB_GATEWAY", "")
    if os.environ.get("REQUIRE_IP_FORWARD") == "1":
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            if f.read().strip() != "1":
                sys.exit("vxlan-link: net.ipv4.ip_forward is 0 in this pod; the NAT cannot forward")
    remote = resolve(os.environ["PEER_HOST"], float(os.environ.get("PEER_TIMEOUT", "300")))
    with IPRoute() as ipr:
        underlay = ipr.link_lookup(ifname=os.environ.get("UNDERLAY_IF", "eth0"))[0]
        mtu = ipr.get_links(underlay)[0].get_attr("IFLA_MTU") - 50  # IPv4 + UDP + VXLAN + inner Ethernet
        for index in ipr.link_lookup(ifname=LINK):
            ipr.link("del", index=index)
        ipr.link(
            "add",
            ifname=LINK,
            kind="vxlan",
            vxlan_id=vni,
            vxlan_local=local,
            vxlan_group=remote,  # a unicast "group" is the remote end (iproute2's `remote`)
            vxlan_port=port,
            vxlan_link=underlay,
        )
        index = ipr.link_lookup(ifname=LINK)[0]
        ipr.link("set", index=index, mtu=mtu, state="up")
        ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        if gateway:
            for rule in ipr.get_rules(family=socket.AF_INET):
                if rule.get_attr("FRA_TABLE") == LAB_TABLE:
                    ipr.rule("del", table=LAB_TABLE, priority=rule.get_attr("FRA_PRIORITY"))
            ipr.route("replace", dst=str(address.network), oif=index, table=LAB_TABLE, scope=253)
            ipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=index, table=LAB_TABLE)
            ipr.rule("add", src=str(address.ip), src_len=32, table=LAB_TABLE, priority=LAB_RULE_PRIORITY)
    print(
        f"vxlan-link: {LINK} {address} vni {vni} port {port} local {local} remote {remote}"
        + (f"; from {address.ip} via {gateway}" if gateway else "")
    )


if __name__ == "__main__":
    main()
