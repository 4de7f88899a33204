#!/bin/sh
# The kernel's conntrack kfunc against an own LRU table, per packet, with
# BPF_PROG_TEST_RUN (bpftool prog run ... repeat N): prints the mean ns
# per run of each program, on a connection conntrack has and one it has
# not, and whether the kernel tracks anything without a netfilter rule
# that needs it. Needs root, clang-14, bpftool, nft, python3. Everything
# happens in a namespace of its own (198.18.0.0/15), removed on exit.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
ns="xpolct-kf$$"
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
repeat=${REPEAT:-5000000}

bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$work/vmlinux.h"
echo "kfuncs in this kernel's BTF:"
bpftool btf dump file /sys/kernel/btf/vmlinux | grep -E "FUNC '(bpf_xdp_ct_lookup|bpf_skb_ct_lookup|bpf_ct_release)'" | sed 's/^/  /'
cp "$here/kfunc_vs_map.c" "$work/"
clang-14 -O2 -g -target bpf -mcpu=v3 -I"$work" -c "$work/kfunc_vs_map.c" -o "$work/ct.o"
echo "the object's BTF (LLVM 14 emits the kfuncs as extern functions in .ksyms):"
bpftool btf dump file "$work/ct.o" | grep -E "linkage=extern|DATASEC '.ksyms'" | sed 's/^/  /'

python3 - "$work" <<'PY'
import struct, sys
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16; return (~s) & 0xffff
def frame(sport):
    udp = struct.pack('!HHHH', sport, 6000, 26, 0) + b'x' * 18
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    return bytes.fromhex('020000000002020000000001') + b'\x08\x00' + ip + udp
open(sys.argv[1] + '/tracked.bin', 'wb').write(frame(5000))
open(sys.argv[1] + '/untracked.bin', 'wb').write(frame(5001))
PY

ip netns add "$ns"
ip netns exec "$ns" sh -eu -c "
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
ip link add v0 type veth peer name v1
ip addr add 198.18.0.1/24 dev v0
ip link set v0 up; ip link set v1 up
ip neigh add 198.18.0.2 lladdr 02:00:00:00:00:02 dev v0
send() { python3 -c \"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('198.18.0.1', 5000)); s.sendto(b'x', ('198.18.0.2', 6000))\"; }
send
echo \"connections conntrack has without a rule that needs it: \$(cat /proc/sys/net/netfilter/nf_conntrack_count)\"
nft add table inet t
nft add chain inet t c '{ type filter hook output priority 0; }'
nft add rule inet t c ct state new accept
sysctl -qw net.netfilter.nf_conntrack_udp_timeout=600
send
echo \"... and with one (nft ct state): \$(cat /proc/sys/net/netfilter/nf_conntrack_count)\"
bpftool prog loadall $work/ct.o /sys/fs/bpf/ct
for p in parse_only kfunc own_map; do
  for f in tracked untracked; do
    r=\$(bpftool prog run pinned /sys/fs/bpf/ct/\$p data_in $work/\$f.bin repeat $repeat | tr '\n' ' ')
    echo \"\$p, \$f connection: \$r\"
  done
done
"
