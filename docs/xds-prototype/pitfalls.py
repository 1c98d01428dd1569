"""Checks the trio-asyncio pitfalls claimed in NOTES.md. Not part of the deliverable proper."""
import asyncio, sys, warnings, trio, trio_asyncio
from trio_asyncio import aio_as_trio
from grpclib.client import Channel
from grpclib.const import Cardinality
import client
from xds_types import DiscoveryRequest, DiscoveryResponse, CDS, Node, AggregatedDiscoveryServiceAsyncStub

def closed_count():
    return open("pit_server.err").read().count("stream closed")

async def settle():
    await trio.sleep(0.3)

async def main():
    async with trio_asyncio.open_loop() as loop:
        async with trio.open_nursery() as procs:
            with open("pit_server.err", "w") as errf:
                proc = await procs.start(lambda task_status: trio.run_process(
                    [sys.executable, "server.py"], stdout=-1, stderr=errf, check=False, task_status=task_status))
            line = b""
            while b"\n" not in line:
                line += await proc.stdout.receive_some()
            port = int(line.split()[1])
            ch = Channel("127.0.0.1", port)        # shared channel, kept open across tests
            req = DiscoveryRequest(node=Node(id="pit"), type_url=CDS)

            # A: unshielded `async with aio_as_trio(channel.request(...))`, cancelled mid-recv
            before = closed_count()
            with trio.move_on_after(1):
                async with aio_as_trio(ch.request(client.ADS_ROUTE, Cardinality.STREAM_STREAM, DiscoveryRequest, DiscoveryResponse)) as s:
                    await aio_as_trio(s.send_message)(req)
                    while True:
                        await aio_as_trio(s.recv_message)()
            await settle()
            print("A unshielded aio_as_trio(cm) cancelled -> server saw stream closed:", closed_count() > before)

            # B: shielded client.open_ads_stream, cancelled mid-recv
            before = closed_count()
            with trio.move_on_after(0.5):
                async with client.open_ads_stream(ch) as s:
                    await aio_as_trio(s.send_message)(req)
                    while True:
                        await aio_as_trio(s.recv_message)()
            await settle()
            print("B shielded open_ads_stream cancelled -> server saw stream closed:", closed_count() > before)

            # C: `async for r in aio_as_trio(stub.stream(...))`, then `break` (not cancel)
            before = closed_count()
            stub = AggregatedDiscoveryServiceAsyncStub(ch)
            async for r in aio_as_trio(stub.stream_aggregated_resources([req])):
                break
            await settle()
            print("C break out of aio_as_trio(stub generator) -> server saw stream closed:", closed_count() > before,
                  "| pending asyncio tasks:", len([t for t in asyncio.all_tasks(loop) if not t.done()]))

            # D: same, but cancelled while waiting for the next response
            before = closed_count()
            with trio.move_on_after(0.5):
                async for r in aio_as_trio(stub.stream_aggregated_resources([req])):
                    pass
            await settle()
            print("D cancel during aio_as_trio(stub generator) read -> server saw stream closed:", closed_count() > before)

            ch.close()
            await settle()
            print("after channel.close(): streams closed on server:", closed_count())
            proc.terminate()

with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    async def outside():
        return Channel("127.0.0.1", 1)
    try:
        trio.run(outside)
        print("E Channel() in trio.run WITHOUT open_loop: constructed (no error)")
    except Exception as e:
        print("E Channel() in trio.run WITHOUT open_loop:", type(e).__name__, e)
    print("  warnings:", [f"{x.category.__name__}: {x.message}" for x in w][:3])

trio.run(main)
