#!/usr/bin/env bash
# Runs every test uturn has: unit, property, integration (real UDP sockets on loopback, a
# real redis-server started by the tests on a free port, coturn's turnutils_* clients and the
# webrtc-rs `turn` client), then clippy. Installs the Debian packages the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v turnutils_uclient >/dev/null 2>&1 || need+=(coturn)
# The XDP object check (bpf/build.sh --check) rebuilds bpf/uturn_xdp.o with Debian's clang.
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v llvm-strip >/dev/null 2>&1 || need+=(llvm)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
# The XDP tests build network namespaces (ip) and set veth offloads (ethtool).
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ethtool >/dev/null 2>&1 || need+=(ethtool)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The browser test: Debian's Chromium (no browser download), Node and npm for its driver.
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# The Kubernetes schema validator below runs from a Python venv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "test.sh: installing ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    # Keep package scripts from starting the packaged turnserver/redis services.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod +x "$policy"
        created_policy=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
    if [ "$created_policy" -eq 1 ]; then $SUDO rm -f "$policy"; fi
fi

# The Kubernetes schema validator (PyPI; it ships the schemas, so validation is offline).
venv=target/k8s-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    echo "test.sh: installing kubernetes-validate into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q kubernetes-validate==1.37.0
fi
export KUBERNETES_VALIDATE="$PWD/$venv/bin/kubernetes-validate"

bpf/build.sh --check

if [ ! -d tests/browser/node_modules/playwright-core ]; then
    echo "test.sh: installing the browser test's npm packages (playwright-core, no browser)"
    (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi

export RUST_BACKTRACE=1
cargo test --all-targets
cargo test --doc
# The container image: built and run only where a container engine answers.
if docker info >/dev/null 2>&1; then
    cargo test --test deploy -- --ignored
else
    echo "################################################################################"
    echo "test.sh: NOT RUN: container image build (no container engine: 'docker info' failed)"
    echo "################################################################################"
fi
cargo clippy --all-targets -- -D warnings
cargo fmt --check
