"""Centrifugo's Python server-API client (`cent`, pinned in requirements.txt), unchanged,
publishing into streamhub: publish, broadcast, history, presence stats, info, batch, and
its errors. Prints `ok <step>` per step and `N passed, M failed` (tests/centrifugo.rs
checks them). Environment: NODE (base URL), API_KEY (a streamhub API key with publish,
subscribe and presence on the test channels), ADMIN_KEY, TOPIC."""

import json
import os
import sys
import traceback
import urllib.request

from cent import (
    BatchRequest,
    BroadcastRequest,
    CentApiResponseError,
    CentUnauthorizedError,
    Client,
    HistoryRequest,
    InfoRequest,
    PresenceStatsRequest,
    PublishRequest,
    StreamPosition,
)

NODE = os.environ["NODE"]
TOPIC = os.environ["TOPIC"]
client = Client(f"{NODE}/api", os.environ["API_KEY"])
admin = Client(f"{NODE}/api", os.environ["ADMIN_KEY"])
passed = failed = 0


def step(label, fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print(f"ok {label}", flush=True)
    except Exception:
        failed += 1
        print(f"FAIL {label}: {traceback.format_exc()}", flush=True)


def history_of(topic):
    request = urllib.request.Request(
        f"{NODE}/v1/topics/{topic}/messages?since=0",
        headers={"Authorization": f"Bearer {os.environ['ADMIN_KEY']}"},
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)["messages"]


def publish():
    first = client.publish(PublishRequest(channel=TOPIC, data={"n": 1}))
    second = client.publish(PublishRequest(channel=TOPIC, data={"n": 2}, tags={"source": "cent"}))
    assert (first.offset, second.offset) == (1, 2), (first, second)
    assert first.epoch and first.epoch == second.epoch, (first, second)
    stored = history_of(TOPIC)
    assert [m["data"] for m in stored] == [{"n": 1}, {"n": 2}], stored
    assert stored[1]["headers"] == {"source": "cent"}, stored[1]


def idempotent():
    a = client.publish(PublishRequest(channel=TOPIC, data={"n": 3}, idempotency_key="cent-3"))
    b = client.publish(PublishRequest(channel=TOPIC, data={"n": 3}, idempotency_key="cent-3"))
    assert a.offset == b.offset == 3, (a, b)
    assert len(history_of(TOPIC)) == 3


def broadcast():
    result = client.broadcast(BroadcastRequest(channels=[TOPIC, f"{TOPIC}.b", "secret.x"], data={"n": 4}))
    ok, ok_b, denied = result.responses
    assert ok.result.offset == 4 and ok_b.result.offset == 1, result
    assert denied.error is not None and denied.error.code == 103, denied


def history():
    h = client.history(HistoryRequest(channel=TOPIC, limit=2, since=StreamPosition(offset=1, epoch="")))
    assert [p.offset for p in h.publications] == [2, 3], h
    assert [p.data for p in h.publications] == [{"n": 2}, {"n": 3}], h
    assert h.offset == 4 and h.epoch, h
    reverse = client.history(HistoryRequest(channel=TOPIC, limit=1, reverse=True))
    assert [p.offset for p in reverse.publications] == [4], reverse


def presence_stats():
    stats = client.presence_stats(PresenceStatsRequest(channel=f"room.{TOPIC}"))
    assert (stats.num_clients, stats.num_users) == (0, 0), stats


def info():
    nodes = admin.info(InfoRequest()).nodes
    assert len(nodes) == 1 and nodes[0].uid and nodes[0].name, nodes
    try:
        client.info(InfoRequest())
        raise AssertionError("info needs an admin key")
    except CentApiResponseError as e:
        assert e.code == 103, e


def batch():
    result = client.batch(
        BatchRequest(requests=[PublishRequest(channel=TOPIC, data={"n": 5}), PublishRequest(channel=TOPIC, data={"n": 6})])
    )
    offsets = [r.offset for r in result.replies]
    assert offsets == [5, 6], result


def errors():
    try:
        client.publish(PublishRequest(channel="cf.bad name", data={}))
        raise AssertionError("an invalid channel is refused")
    except CentApiResponseError as e:
        assert e.code == 102, e
    try:
        Client(f"{NODE}/api", "not-a-key").publish(PublishRequest(channel=TOPIC, data={}))
        raise AssertionError("an unknown key is refused")
    except CentUnauthorizedError:
        pass


step("publish: stored with offsets and an epoch, tags as headers", publish)
step("an idempotency key stores once", idempotent)
step("broadcast: one result per channel, refusals per channel", broadcast)
step("history: a page after an offset, and newest first", history)
step("presence stats", presence_stats)
step("info: this node, for admin keys only", info)
step("batch: replies in order", batch)
step("errors: an invalid channel, an unknown key", errors)
print(f"{passed} passed, {failed} failed", flush=True)
sys.exit(1 if failed else 0)
