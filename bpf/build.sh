#!/usr/bin/env bash
# Builds bpf/uturn_xdp.o, the XDP program uturn embeds (src/xdp/ include_bytes! it, so
# `cargo build` needs no clang), from bpf/uturn_xdp.c.
#
#   bpf/build.sh          regenerate bpf/uturn_xdp.o (commit it with the source)
#   bpf/build.sh --check  rebuild into a temporary file and fail unless it is byte-identical
#                         to the committed object (scripts/test.sh runs this)
#
# The build is reproducible: the same clang gives the same bytes in any directory. The
# compilation directory is fixed to "." and DWARF is stripped (BTF, which the loader needs
# for the maps and the verifier uses for line info, stays). Byte identity is only promised
# for one compiler, so the check insists on it: Debian 12's clang 14 (`apt-get install clang
# llvm libbpf-dev`). With another major version the check fails and says so rather than
# comparing objects that legitimately differ.
set -euo pipefail
cd "$(dirname "$0")"

CLANG_MAJOR=14
out=uturn_xdp.o
check=0
if [ "${1:-}" = "--check" ]; then check=1; fi

for tool in clang llvm-strip; do
    command -v "$tool" >/dev/null 2>&1 || { echo "bpf/build.sh: $tool not found (apt-get install clang llvm libbpf-dev)" >&2; exit 1; }
done
[ -f /usr/include/bpf/bpf_helpers.h ] || { echo "bpf/build.sh: libbpf-dev headers not found" >&2; exit 1; }
major=$(clang -dumpversion | cut -d. -f1)
if [ "$major" != "$CLANG_MAJOR" ]; then
    echo "bpf/build.sh: clang $major found; the committed object is built with clang $CLANG_MAJOR" \
         "(Debian 12). Install that one to check or regenerate it." >&2
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
clang -O2 -g -target bpf -Wall -Werror \
    -I"/usr/include/$(uname -m)-linux-gnu" \
    -fdebug-compilation-dir=. \
    -c uturn_xdp.c -o "$tmp/$out"
llvm-strip -g "$tmp/$out"

if [ "$check" -eq 1 ]; then
    if cmp -s "$tmp/$out" "$out"; then
        echo "bpf/build.sh: $out matches uturn_xdp.c"
    else
        echo "bpf/build.sh: $out is stale or was not built from uturn_xdp.c: run bpf/build.sh and commit it" >&2
        exit 1
    fi
else
    cp "$tmp/$out" "$out"
    echo "bpf/build.sh: wrote bpf/$out ($(stat -c %s "$out") bytes)"
fi
