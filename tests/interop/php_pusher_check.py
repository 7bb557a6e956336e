"""The Pusher checks of tests/interop/php_app.sh (read its header): the PHP
example's Laravel-style broadcaster (examples/php/broadcaster.php) against
roostd's Pusher door, driven by a Pusher-protocol client built on the raw
WebSocket client of tests/interop/roostd_server.py (standard library only).
Every "did not arrive" is shown by a later event arriving first, never by a
sleep."""
import hashlib, hmac, json, os, tempfile, time, urllib.parse

import php_checks
from php_checks import check, curl
from roostd_server import RawWS


ROOSTD = int(os.environ["ROOSTD_PORT"])
PHP = f"http://127.0.0.1:{os.environ['PHP_PORT']}"
APP_ID = os.environ["PUSHER_APP_ID"]
KEY = os.environ["PUSHER_APP_KEY"]
SECRET = os.environ["ROOSTD_SECRET"]  # the Pusher secret: roostd's default key
JAR = os.path.join(tempfile.mkdtemp(prefix="roostd-php-pusher-"), "cookies")


def auth(socket_id, channel, jar=JAR):
    """POST /broadcasting/auth as pusher-js does it: a form, with the page's cookies."""
    return curl(f"{PHP}/broadcasting/auth", "-X", "POST", "--data-urlencode", f"socket_id={socket_id}",
                "--data-urlencode", f"channel_name={channel}", jar=jar)


class PusherWS:
    """A Pusher protocol 7 client: `data` of server events is a JSON text."""

    def __init__(self):
        self.ws = RawWS(ROOSTD, None, path=f"/app/{KEY}?protocol=7&client=python&version=0")
        hello = self.ws.recv()
        assert hello["event"] == "pusher:connection_established", hello
        self.socket_id = json.loads(hello["data"])["socket_id"]

    def send(self, event, data):
        self.ws.send({"event": event, "data": data})

    def recv(self):
        m = self.ws.recv()
        if isinstance(m.get("data"), str):
            try:
                m["data"] = json.loads(m["data"])
            except ValueError:
                pass
        return m

    def subscribe(self, channel, answer=None):
        data = {"channel": channel, **(answer or {})}
        self.send("pusher:subscribe", data)
        return self.recv()


def sign_api(method, path, body, secret=SECRET, now=None):
    """pusher-php-server's signing, written again in Python."""
    params = {"auth_key": KEY, "auth_timestamp": str(now or int(time.time())), "auth_version": "1.0"}
    if body:
        params["body_md5"] = hashlib.md5(body.encode()).hexdigest()
    query = "&".join(f"{k}={params[k]}" for k in sorted(params))
    sig = hmac.new(secret.encode(), f"{method}\n{path}\n{query}".encode(), hashlib.sha256).hexdigest()
    return f"{query}&auth_signature={sig}"


def api_events(body, secret=SECRET, sign_body=None):
    path = f"/apps/{APP_ID}/events"
    query = sign_api("POST", path, sign_body if sign_body is not None else body, secret)
    return curl(f"http://127.0.0.1:{ROOSTD}{path}?{query}", "-X", "POST",
                "-H", "Content-Type: application/json", "--data-binary", body)


# 1. /broadcasting/auth signs only for the logged-in user.
alice = PusherWS()
check(alice.socket_id.count(".") == 1, f"pusher:connection_established gives a socket_id ({alice.socket_id})")
status, body = auth(alice.socket_id, "private-orders.1", jar=None)
check(status == 403, f"/broadcasting/auth without a log-in is 403 ({status} {body})")
status, body = curl(f"{PHP}/login?user=alice", jar=JAR)
check(status == 200 and json.loads(body) == {"user": "alice"}, f"/login sets the demo cookie ({status} {body})")
forged = os.path.join(os.path.dirname(JAR), "forged")
with open(JAR) as f:
    jar_text = f.read()
with open(forged, "w") as f:
    f.write(jar_text.replace("alice.", "bob."))
status, body = auth(alice.socket_id, "private-orders.1", jar=forged)
check(status == 403, f"a cookie renamed to another user is not a log-in ({status} {body})")
status, body = auth("not-a-socket", "private-orders.1")
check(status == 400, f"a malformed socket_id is 400 ({status} {body})")

# 2. A private channel: the signature Laravel's PusherBroadcaster gives.
status, body = auth(alice.socket_id, "private-orders.1")
answer = json.loads(body)
expected = hmac.new(SECRET.encode(), f"{alice.socket_id}:private-orders.1".encode(), hashlib.sha256).hexdigest()
check(status == 200 and answer == {"auth": f"{KEY}:{expected}"},
      f"private auth = key:hex(hmac_sha256(socket_id:channel)) ({status} {body})")
m = alice.subscribe("private-orders.1", answer)
check(m["event"] == "pusher_internal:subscription_succeeded" and m["channel"] == "private-orders.1",
      f"roostd accepts the PHP signature ({m})")
status, body = auth(alice.socket_id, "private-user.bob")
check(status == 403, f"private-user.bob is bob's alone ({status} {body})")
status, body = auth(alice.socket_id, "private-user.alice")
check(status == 200, f"private-user.alice is alice's ({status} {body})")

# 3. A bad signature is refused, and the socket stays open.
status, body = auth(alice.socket_id, "private-other")
good = json.loads(body)["auth"]
tampered = good[:-1] + ("0" if good[-1] != "0" else "1")
m = alice.subscribe("private-other", {"auth": tampered})
check(m["event"] == "pusher:subscription_error" and m["data"].get("status") == 401,
      f"a tampered auth → subscription_error 401 ({m})")
other = PusherWS()
m = alice.subscribe("private-other", {"auth": json.loads(auth(other.socket_id, "private-other")[1])["auth"]})
check(m["event"] == "pusher:subscription_error" and m["data"].get("status") == 401,
      f"another socket's auth → subscription_error 401 ({m})")
m = alice.subscribe("private-other", {"auth": good})
check(m["event"] == "pusher_internal:subscription_succeeded", f"the socket stays usable ({m})")

# 4. Presence: channel_data with user_id and user_info, signed with it.
status, body = auth(alice.socket_id, "presence-room.1")
answer = json.loads(body)
channel_data = answer.get("channel_data", "")
expected = hmac.new(SECRET.encode(), f"{alice.socket_id}:presence-room.1:{channel_data}".encode(), hashlib.sha256).hexdigest()
check(status == 200 and answer["auth"] == f"{KEY}:{expected}"
      and json.loads(channel_data) == {"user_id": "alice", "user_info": {"name": "Alice"}},
      f"presence auth signs socket_id:channel:channel_data ({body})")
m = alice.subscribe("presence-room.1", answer)
check(m["event"] == "pusher_internal:subscription_succeeded" and m["data"]["presence"]["ids"] == ["alice"]
      and m["data"]["presence"]["hash"]["alice"] == {"name": "Alice"}, f"alice is the member ({m})")
bob_jar = JAR + ".bob"
curl(f"{PHP}/login?user=bob", jar=bob_jar)
bob = PusherWS()
m = bob.subscribe("presence-room.1", json.loads(auth(bob.socket_id, "presence-room.1", jar=bob_jar)[1]))
check(m["event"] == "pusher_internal:subscription_succeeded" and sorted(m["data"]["presence"]["ids"]) == ["alice", "bob"],
      f"bob joins and sees both ({m['data']})")
m = alice.recv()
check(m["event"] == "pusher_internal:member_added" and m["data"] == {"user_id": "bob", "user_info": {"name": "Bob"}},
      f"alice hears bob join ({m})")

# 5. /broadcast: the PHP trigger, signed like pusher-php-server, reaches the page.
status, body = curl(f"{PHP}/broadcast?" + urllib.parse.urlencode(
    {"ch": "private-orders.1", "event": "OrderShipped", "text": "hé \"x\"", "socket_id": alice.socket_id}))
check(status == 200, f"/broadcast with toOthers() (socket_id) is accepted ({status} {body})")
status, body = curl(f"{PHP}/broadcast?" + urllib.parse.urlencode({"ch": "private-orders.1", "event": "OrderShipped", "text": "hi"}))
check(status == 200 and json.loads(body) == {}, f"/broadcast → roostd's 200 {{}} ({status} {body})")
m = alice.recv()
check(m == {"event": "OrderShipped", "channel": "private-orders.1", "data": {"text": "hi"}},
      f"alice gets the event, and not the one sent with her own socket_id ({m})")
status, body = curl(f"{PHP}/broadcast?" + urllib.parse.urlencode({"ch": "presence-room.1", "event": "Said", "text": "hé \"x\""}))
m = bob.recv()
check(status == 200 and m == {"event": "Said", "channel": "presence-room.1", "data": {"text": "hé \"x\""}},
      f"bob gets a presence-channel event, unicode and quotes intact ({m})")
alice.recv()  # the same event on alice's socket

# 6. The HTTP API refuses a bad signature and delivers nothing.
event = json.dumps({"name": "Forged", "data": "{}", "channels": ["private-orders.1"]})
status, body = api_events(event, secret="not-the-secret-0123456789abcdef-0123456789")
check(status == 401, f"an API request signed with another secret → 401 ({status} {body})")
status, body = api_events(event, sign_body=event.replace("Forged", "Other"))
check(status == 401, f"a body that does not match body_md5 → 401 ({status} {body})")
status, body = api_events(json.dumps({"name": "Marker", "data": "{}", "channels": ["private-orders.1"]}))
check(status == 200, f"the same request signed right → 200 ({status} {body})")
m = alice.recv()
check(m["event"] == "Marker", f"the forged events never arrived: the marker is next ({m})")
status, body = curl(f"{PHP}/broadcast?ch=private-orders.1")
check(status == 400, f"/broadcast without an event is 400 ({status} {body})")

for c in (alice, bob, other):
    c.ws.close()
print(f"php_pusher: {php_checks.passed} passed, 0 failed")
