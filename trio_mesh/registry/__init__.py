"""Service registration (MOSN's dubbod): the pub/sub HTTP API, the registry sessions
(ZooKeeper with Dubbo's node layout, or in-memory), and the clusters and routes that
subscriptions keep."""
