"""The checks of tests/interop/php_app.sh (read its header): roostd and the
PHP example application, driven by the raw WebSocket client of
tests/interop/roostd_server.py (standard library only)."""
import base64, hashlib, json, os, time

import php_checks
from php_checks import check, curl
from roostd_server import RawWS


ROOSTD = int(os.environ["ROOSTD_PORT"])
PHP = f"http://127.0.0.1:{os.environ['PHP_PORT']}"
APP_SUB = os.environ["APP_SUB"]
SECRET = os.environ["ROOSTD_SECRET"]
def b64url_json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


# 1. /token: a PHP-minted HS256 JWT with the claims a client needs.
status, body = curl(f"{PHP}/token?sub=bob")
check(status == 200, f"/token answers 200 ({status} {body})")
token = json.loads(body)["token"]
header, claims = b64url_json(token.split(".")[0]), b64url_json(token.split(".")[1])
check(header == {"alg": "HS256", "typ": "JWT"}, f"the header is HS256 ({header})")
check(claims["sub"] == "bob" and claims["read"] == ["room:*"] and claims["write"] == ["room:*"]
      and claims["exp"] > time.time(), f"the claims ({claims})")
# An independent HMAC check of PHP's signature (Python's hmac, not PHP's).
import hmac
signing_input, _, sig = token.rpartition(".")
expected = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())
check(expected.rstrip(b"=").decode() == sig, "the signature is HMAC-SHA256 of the secret's bytes")
status, body = curl(f"{PHP}/token")
check(status == 400, f"/token without sub is 400 ({status})")

# 2. roostd accepts it, and honours its patterns.
ws = RawWS(ROOSTD, token, refusal_ok=True)
check(ws.status == 101, f"roostd accepts the PHP token ({ws.head.splitlines()[0]})")
ws.send({"op": "sub", "ch": "room:1", "id": "s"})
ok = ws.recv()
check(ok["op"] == "subok" and ok["ch"] == "room:1" and ok["seq"] == 0, f"subscribed to room:1 ({ok})")
ws.send({"op": "sub", "ch": "other", "id": "o"})
err = ws.recv()
check((err["op"], err.get("code")) == ("err", "forbidden"), f"read is room:* only ({err})")
bad = RawWS(ROOSTD, token[:-2] + ("AA" if not token.endswith("AA") else "BB"), refusal_ok=True)
check(bad.status == 401 and "token_invalid" in bad.head + bad.rest(), "a tampered token is 401")

# 3. /publish: through roostd's HTTP API with the app's own token.
status, body = curl(f"{PHP}/publish?ch=room:1&text=hi")
answer = json.loads(body)
check(status == 201 and answer["ch"] == "room:1" and answer["seq"] == 1, f"/publish → 201 from roostd ({status} {body})")
msg = ws.recv()
check(msg["op"] == "msg" and msg["ch"] == "room:1" and msg["seq"] == 1, f"the subscriber gets it ({msg})")
check(msg["from"] == APP_SUB, f"from is the PHP app's sub ({msg['from']})")
check(msg["data"] == {"text": "hi"} and msg["ts"] == answer["ts"], f"data and ts ({msg})")

# Idempotency-Key through the PHP app: the original seq, stored once.
status, body = curl(f"{PHP}/publish?ch=room:1&text=once&key=k-1")
first = json.loads(body)
check(status == 201 and first["seq"] == 2, f"keyed publish ({status} {body})")
status, body = curl(f"{PHP}/publish?ch=room:1&text=once&key=k-1")
check(status == 200 and json.loads(body) == first, f"the same key again → 200, same seq and ts ({status} {body})")
check(ws.recv()["seq"] == 2, "delivered once")
# roostd's refusals come back as they are.
status, body = curl(f"{PHP}/publish?ch=bad%20name&text=x")
check(status == 404 and json.loads(body) == {"error": "not_found"}, f"a bad channel name → 404 ({status} {body})")
# The HTTP API is the app's alone: bob's client token (no "api": true) is refused.
status, body = curl(f"http://127.0.0.1:{ROOSTD}/api/channels/room:1/messages",
                    "-H", f"Authorization: Bearer {token}")
check(status == 403 and json.loads(body) == {"error": "api_forbidden"},
      f"a PHP client token on roostd's HTTP API → 403 api_forbidden ({status} {body})")

# The PHP client token may publish to room:* over the WebSocket too.
ws.send({"op": "pub", "ch": "room:1", "data": {"text": "from bob"}, "id": "b1"})
ack = ws.recv()
check(ack["op"] == "ack" and ack["seq"] == 3, f"bob's pub is acked ({ack})")
msg = ws.recv()
check(msg["from"] == "bob" and msg["seq"] == 3, f"and delivered with from=bob ({msg})")
ws.close()

# 4. /hook, called directly (roostd's --publish-hook is not built yet).
hook = f"{PHP}/hook"
def post_hook(payload, token=token):
    return curl(hook, "-X", "POST", "-H", "Content-Type: application/json",
                "-H", f"Authorization: Bearer {token}", "--data-binary", json.dumps(payload))
status, body = post_hook({"ch": "room:1", "from": "bob", "data": {"text": "hello", "n": 1}, "id": "h1"})
check(status == 200 and json.loads(body) == {"data": {"text": "HELLO", "n": 1}}, f"/hook uppercases ({status} {body})")
status, body = post_hook({"ch": "room:1", "from": "bob", "data": {"text": "this is Forbidden"}, "id": "h2"})
check(status == 403, f"/hook refuses 'forbidden' ({status} {body})")
status, body = post_hook({"ch": "room:1", "from": "bob", "data": [1, 2], "id": None})
check(status == 200 and body == "", f"/hook lets other data through unchanged ({status} {body!r})")
status, body = post_hook({"ch": "room:1", "from": "bob", "data": {"text": "x"}}, token="not.a.token")
check(status == 401, f"/hook needs the client's valid token ({status})")
status, _ = curl(hook)
check(status == 405, f"/hook is POST only ({status})")

print(f"php_app: {php_checks.passed} passed, 0 failed")