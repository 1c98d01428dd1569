"""trio-mesh's tests, one folder per layer of trio_mesh/ (protocols, config, router, network,
clusters: upstream and pools, filters, proxy, server, cli, xds), each a package.

Peers and helpers shared across folders live here and are imported as ``tests.<module>``:
http_helpers (raw HTTP/1 client, proxy start-up, configs), upstream (h11 upstream),
h2_upstream (raw h2 peers), grpc_helpers, rpc_helpers (bolt and Dubbo peers), anthunder_peers,
bolt_frames and dubbo_frames_data (captured frames), filter_helpers (test-only stream filters),
tcp_helpers (L4 peers), cli_helpers (trio-mesh as a subprocess), xds_server (an ADS server run
as a process). A test module never imports another folder's test module.

tests/xds/ runs in its own pytest process when other tests share the session (isolation.py).
"""
