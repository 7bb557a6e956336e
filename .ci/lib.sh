# Shared by the CI scripts (sourced, not run): how a script says it skipped,
# and installing Debian packages. The contract is described at the top of
# .ci/run:
#
#   exit 77  SKIPPED: the script could not do its job here (a tool missing
#            that it could not install, no root, no ptrace...). Fails the run.
#   exit 78  SKIPPED(registry): a package registry (Debian, PyPI, npm,
#            crates.io) could not be reached, so a tool could not be
#            installed. The run passes, and its summary names the skip.
#
# Before exiting, the script prints one line `<name>: SKIPPED <reason>` or
# `<name>: SKIPPED(registry) <reason>`; .ci/run quotes the last such line.
#
# A script sets SKIP_NAME (the prefix of its lines) before using these.

# Lines that mean the network or the registry failed, not the request: apt
# (name resolution, refused/failed connections, a mirror in sync or a file
# missing from it), pip (urllib3 retries), npm (errno codes), cargo.
REGISTRY_ERRORS='Temporary failure (in name )?resolv|Could not resolve|Could not connect|Unable to connect|Failed to fetch|Connection (refused|timed out|failed|reset)|Network is unreachable|No route to host|Hash Sum mismatch|File has unexpected size|Mirror sync in progress|NewConnectionError|Max retries exceeded|ReadTimeoutError|ProxyError|ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|spurious network error|failed to download|Couldn.t resolve host|failed to query replaced source registry|failed to update registry'

skip() {
    echo "${SKIP_NAME:-ci}: SKIPPED $*"
    exit 77
}

skip_registry() {
    echo "${SKIP_NAME:-ci}: SKIPPED(registry) $*"
    exit 78
}

# registry_unreachable FILE...: true when the logs show a registry that
# could not be reached.
registry_unreachable() {
    grep -qE "$REGISTRY_ERRORS" "$@" 2>/dev/null
}

# skip_install_failed REASON FILE...: skips (78 when FILE... show an
# unreachable registry, 77 otherwise), quoting the first error line.
skip_install_failed() {
    local why=$1 line
    shift
    line=$(grep -hE "$REGISTRY_ERRORS|^E:|^ERROR|^npm ERR|^npm error|^error" "$@" 2>/dev/null | head -n 1)
    if registry_unreachable "$@"; then
        skip_registry "$why${line:+ ($line)}"
    fi
    skip "$why${line:+ ($line)}"
}

# apt_install LOG PACKAGE...: installs Debian packages (as root), retrying
# `apt-get update` once; apt's output goes to LOG. Returns apt-get's status.
apt_install() {
    local log=$1
    shift
    [ "$(id -u)" = 0 ] || { echo "not root: cannot apt-get install $*" >"$log"; return 1; }
    command -v apt-get >/dev/null 2>&1 || { echo "no apt-get" >"$log"; return 1; }
    export DEBIAN_FRONTEND=noninteractive
    local opts=(-o Acquire::Retries=3 -o DPkg::Lock::Timeout=300)
    apt-get "${opts[@]}" install -y -q "$@" >"$log" 2>&1 && return 0
    { apt-get "${opts[@]}" update -q && apt-get "${opts[@]}" install -y -q "$@"; } >>"$log" 2>&1
}

# need_apt COMMAND PACKAGE: installs PACKAGE when COMMAND is missing; skips
# (77, or 78 when the registry could not be reached) when it cannot.
need_apt() {
    command -v "$1" >/dev/null 2>&1 && return 0
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/ci-apt.XXXXXX")
    echo "${SKIP_NAME:-ci}: $1 is missing; apt-get install $2"
    if ! apt_install "$log" "$2" || ! command -v "$1" >/dev/null 2>&1; then
        tail -n 5 "$log" | sed 's/^/  apt: /'
        skip_install_failed "$1 is not installed and apt-get install $2 failed" "$log"
    fi
    rm -f "$log"
}

# A folder of Node tests: node >= 20 and npm (installed with apt when
# missing; Debian 12's nodejs is 18, so node 20 must come from elsewhere,
# e.g. NodeSource), the roostd binary in ROOSTD_BIN (else a fresh debug
# build: it embeds web/index.html and web/roost.js), and `npm ci` in DIR
# from its package-lock.json. Skips (77, or 78 for an unreachable registry)
# when one cannot be had; WHAT names the packages in that message. Uses the
# caller's $root and $log.
node_project() {
    local dir=$1 what=$2 major
    need_apt node nodejs
    need_apt npm npm
    major=$(node -p 'process.versions.node.split(".")[0]')
    if (( major < 20 )); then
        skip "node $(node --version) is older than 20 (install node 20 or newer, e.g. from NodeSource)"
    fi
    if [[ -z "${ROOSTD_BIN:-}" ]]; then
        cargo build --quiet --bin roostd
        export ROOSTD_BIN="$root/target/debug/roostd"
    fi
    if ! (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) 2>"$log"; then
        cat "$log" >&2
        skip_install_failed "npm ci could not install $what" "$log"
    fi
}

# need_chromium STATUS: Debian's chromium at $chromium (installed with apt
# when missing, as root) or a skip (77, or 78 for an unreachable registry).
# STATUS is the caller's result so far: a failure already seen exits 1 rather
# than hiding behind a skip. Uses the caller's $log.
need_chromium() {
    local status=$1
    chromium=${CHROMIUM:-/usr/bin/chromium}
    if [[ ! -x "$chromium" ]]; then
        echo "--- installing Debian's chromium"
        if [[ $(id -u) -ne 0 ]]; then
            [[ $status -eq 0 ]] || exit 1
            skip "chromium is not installed and this is not root (apt-get install chromium)"
        fi
        if ! apt_install "$log" chromium; then
            [[ $status -eq 0 ]] || exit 1
            skip_install_failed "apt-get could not install chromium" "$log"
        fi
    fi
    if ! "$chromium" --version >/dev/null 2>&1; then
        [[ $status -eq 0 ]] || exit 1
        skip "$chromium does not run"
    fi
}
