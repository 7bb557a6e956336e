"""What the PHP example's checks share (php_app_check.py,
php_pusher_check.py): `check` stops at the first failure, `curl` asks the PHP
app or roostd."""
import subprocess, sys

TIMEOUT = 5
passed = 0


def check(cond, what):
    global passed
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)
    passed += 1
    print(f"ok: {what}")


def curl(url, *args, jar=None):
    """(status, body) of a request, through curl; `jar` keeps cookies in that file."""
    cookies = ["-b", jar, "-c", jar] if jar else []
    out = subprocess.run(
        ["curl", "-s", "--noproxy", "*", "-m", str(TIMEOUT), "-w", "\n%{http_code}", *cookies, *args, url],
        capture_output=True, text=True, check=True,
    ).stdout
    body, _, status = out.rpartition("\n")
    return int(status), body
