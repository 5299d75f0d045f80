"""The impairment engine that the NAT gateway and the switch share: declared faults applied to real
forwarded packets through an NFQUEUE.

- `engine`: the rules (predicates over datagrams, actions), the pure decisions, the links a service
  sits on (`RoutedLinks`, `BridgePorts`) and the asyncio driver (`FaultInjector`);
- `nfqueue`: the NFQUEUE client and the iptables rules that feed it;
- `nfnetlink`: the netlink plumbing it shares with the gateway's NFLOG reader;
- `wire`: the gRPC FaultPlan (faults.proto) to and from engine.FaultPlan.
"""
