"""Real SOFA bolt v1 frames, captured once from anthunder 0.8.1 (the SOFA Python client/server).

How they were captured (a throwaway script, run once with the venv's python):

* anthunder's real client against a plain-socket server: ``SERVICE_MAP[SERVICE] =
  ("127.0.0.1", port)`` of a ``socket`` server on 127.0.0.1 that read whole frames (22-byte
  header, then class + header + content lengths) and recorded them; it answered requests with
  ``BoltResponse.response_to(...)`` so that ``anthunder.Client("pytest-app").invoke_sync`` returned.
  ``invoke_oneway`` went on the same connection; the heartbeat came from
  ``AioClient("pytest-app").invoke_heartbeat(("127.0.0.1", port))`` (anthunder's AioClient then
  raises KeyError: it drops heartbeat replies, a bug of its own).
* anthunder's real server against a plain-socket client: ``AioListener(("127.0.0.1", port),
  "pytest-server")`` with ``handler.register_interface(SERVICE, Hello)`` (a ``BaseService``
  subclass whose ``sayHello`` returns ``b"\n\x05world"``), started with ``run_threading()``; the
  recorded client frames were sent to it over a ``socket.create_connection`` and its replies read
  back the same way, plus one request for an unregistered service.

Both sides' MeshClient start-up fails (nothing listens on 127.0.0.1:13330): they only log it.
Request ids start at a random value (anthunder's ``RequestId``); the trace id in the headers
embeds 127.0.0.1 (7f000001) and the capture time.
"""

SERVICE = "com.alipay.test.HelloService:1.0"


# anthunder Client.invoke_sync(SERVICE, 'sayHello', b'\n\x05hello', timeout_ms=3000):
# a two-way request, protobuf (codec 11), 3000 ms
CLIENT_REQUEST = (
    b'\x01\x01\x00\x01\x01\x12\x08\xe5.\x0b\x00\x00\x0b\xb8\x00,\x01"\x00\x00\x00\x07com.alipay'
    b".sofa.rpc.core.request.SofaRequest\x00\x00\x00\x18sofa_head_target_service\x00\x00\x00 co"
    b"m.alipay.test.HelloService:1.0\x00\x00\x00\x15sofa_head_method_name\x00\x00\x00\x08sayHel"
    b"lo\x00\x00\x00\x14sofa_head_target_app\x00\x00\x00\x00\x00\x00\x00\x07service\x00\x00\x00"
    b" com.alipay.test.HelloService:1.0\x00\x00\x00\x03uid\x00\x00\x00\x00\x00\x00\x00\x1drpc_t"
    b"race_context.sofaTraceId\x00\x00\x00\x1e7f0000011796237351884100012611\x00\x00\x00\x1brpc"
    b"_trace_context.sofaRpcId\x00\x00\x00\x011\n\x05hello"
)

# anthunder Client.invoke_oneway(SERVICE, 'notify', b'\n\x04ping'): type 2, timeout -1
CLIENT_ONEWAY = (
    b"\x01\x02\x00\x01\x01\x12\x08\xe5/\x0b\xff\xff\xff\xff\x00,\x01 \x00\x00\x00\x06com.alipay"
    b".sofa.rpc.core.request.SofaRequest\x00\x00\x00\x18sofa_head_target_service\x00\x00\x00 co"
    b"m.alipay.test.HelloService:1.0\x00\x00\x00\x15sofa_head_method_name\x00\x00\x00\x06notify"
    b"\x00\x00\x00\x14sofa_head_target_app\x00\x00\x00\x00\x00\x00\x00\x07service\x00\x00\x00 c"
    b"om.alipay.test.HelloService:1.0\x00\x00\x00\x03uid\x00\x00\x00\x00\x00\x00\x00\x1drpc_tra"
    b"ce_context.sofaTraceId\x00\x00\x00\x1e7f0000011796237351884100012611\x00\x00\x00\x1brpc_t"
    b"race_context.sofaRpcId\x00\x00\x00\x011\n\x04ping"
)

# anthunder AioClient.invoke_heartbeat(): cmdcode 0, no class, timeout 0
CLIENT_HEARTBEAT = (
    b"\x01\x01\x00\x00\x01\x12\x08\xe50\x0b\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
)

# anthunder AioListener's reply to CLIENT_REQUEST (handler returned b'\n\x05world')
SERVER_RESPONSE = (
    b"\x01\x00\x00\x02\x01\x12\x08\xe5.\x0b\x00\x00\x00.\x00\x00\x00\x00\x00\x07com.alipay.sofa"
    b".rpc.core.response.SofaResponse\n\x05world"
)

# anthunder AioListener's reply to CLIENT_HEARTBEAT
SERVER_HEARTBEAT_REPLY = (
    b"\x01\x00\x00\x00\x01\x12\x08\xe50\x0b\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
)

# anthunder AioListener's reply to a request for an unregistered service
# (status NO_PROCESSOR 0x0006)
SERVER_NO_PROCESSOR = (
    b"\x01\x00\x00\x02\x01\x12\x08\xe51\x0b\x00\x06\x00.\x00\x00\x00\x00\x00\x00com.alipay.sofa"
    b".rpc.core.response.SofaResponse"
)
