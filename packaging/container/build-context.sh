#!/bin/sh
# Stage the build context of packaging/container/Containerfile:
#   build-context.sh BINARY OUTDIR
# OUTDIR/Containerfile and OUTDIR/rootfs/ with BINARY as /usr/bin/tcpstall, every shared
# library `ldd BINARY` lists (and the dynamic loader) at its path, the default policy as
# /etc/tcpstall/policy.toml, and the empty folders the agent's mounts go on. OUTDIR is
# replaced. Then: podman build -t tcpstall:0.1.0 OUTDIR (or docker build).
set -eu
if [ $# -ne 2 ]; then
    echo "usage: $0 BINARY OUTDIR" >&2
    exit 2
fi
bin=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$bin" ] || { echo "$0: $bin is not an executable file" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out/rootfs/usr/bin" "$out/rootfs/etc/tcpstall" "$out/rootfs/var/lib/tcpstall" \
    "$out/rootfs/sys/fs/bpf" "$out/rootfs/run/netns" "$out/rootfs/proc" "$out/rootfs/dev" \
    "$out/rootfs/tmp"
chmod 1777 "$out/rootfs/tmp"
cp "$bin" "$out/rootfs/usr/bin/tcpstall"
chmod 0755 "$out/rootfs/usr/bin/tcpstall"
# Every absolute path ldd prints: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)"
# and "/lib64/ld-linux-x86-64.so.2 (0x...)". A static binary has none.
libs=$(ldd "$bin" 2>/dev/null | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' || true)
for lib in $libs; do
    mkdir -p "$out/rootfs$(dirname "$lib")"
    cp -L "$lib" "$out/rootfs$lib"
done
cp "$here/../policy.toml" "$out/rootfs/etc/tcpstall/policy.toml"
cp "$here/Containerfile" "$out/Containerfile"
echo "$out: $(find "$out/rootfs" -type f | wc -l) files; build with: podman build -t tcpstall:0.1.0 $out"
