#!/usr/bin/env python3
"""Counts the BPF instructions xpol's `lb` and the C twin execute on one
packet of a case of benches/lb_path.rs, by running each object's code (as
compiled, before the kernel's rewrites: array lookups inlined, helpers
patched) in a small BPF interpreter.

    bench/lb/insn_count.py [--trace xpol|c [--tx]] CASE...    (run from the repository)

CASE: ipip4 ipip6 gue4 gue6 nat4 nat6 (benches/lb_path.rs `CASES`). Each
is built as the benchmark builds it (`policy_text`, `c_defines`: xpolc
from target/release, clang-14), then run on the benchmark's established
flow packet (a TCP ACK with 10 bytes of payload, from 198.18.7.7:40000 or
2001:db8:7::7 to the VIP's port 80), first as a new flow (flow table and NAT
map empty), then again (established), at both exits (the FIB answers
NOT_FWDED, or success with MACs). Printed per run: instructions executed,
stack loads and stores (through r10), helper calls in order, and the
instructions before each helper call. The two programs' frames and verdicts
must be the same, as the benchmark requires of the kernel's.

Maps are modelled as far as these paths need: arrays give zeroed values
(the backends array holds 10 present backends; the ring gives slot
index % 10), hash maps hold what the program stored. Helpers:
bpf_map_lookup_elem, bpf_map_update_elem, bpf_get_smp_processor_id (0),
bpf_ktime_get_coarse_ns, bpf_xdp_adjust_head, bpf_fib_lookup,
bpf_redirect. Anything else stops the run with an error.
"""
import argparse
import ipaddress
import os
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
M32 = (1 << 32) - 1
M64 = (1 << 64) - 1
XDP_MD_DATA, XDP_MD_DATA_END, XDP_MD_INGRESS = 0, 4, 12
FIB_NOT_FWDED = 4

# ------------------------------------------------------------------ cases (as benches/lb_path.rs)

BACKENDS = 10
CASES = {
    # name: (v6, gue, nat)
    'ipip4': (False, False, False),
    'ipip6': (True, False, False),
    'gue4': (False, True, False),
    'gue6': (True, True, False),
    'nat4': (False, False, True),
    'nat6': (True, False, True),
}


def backend(v6, i):
    return ipaddress.ip_address(f'2001:db8:1::{0x10 + i:x}' if v6 else f'198.18.1.{10 + i}')


def policy_text(v6, gue, nat):
    pool = ', '.join(str(backend(v6, i)) for i in range(BACKENDS))
    vip, src = ('2001:db8::100', '2001:db8::1') if v6 else ('198.18.0.100', '198.18.0.1')
    if nat:
        delivery = 'nat, port: 8080'
    else:
        delivery = f"encap: {'gue, port: 6080' if gue else 'ipip'}, src: {src}"
    return f'pool web = {{ {pool} }}\nxdp /ip.dst == {vip} && tcp.dport == 80/ {{ lb(web, {delivery}) }}\n'


def loaded_words(addr):
    b = ipaddress.ip_address(addr).packed
    return [int.from_bytes(b[i:i + 4], 'little') for i in range(0, len(b), 4)]


def c_defines(v6, gue, nat):
    d = [f'-DVIP_V6={int(v6)}', f'-DOUTER_V6={int(v6)}', f'-DGUE={int(gue)}', '-DGUE_PORT=6080', f'-DNAT={int(nat)}', '-DNAT_PORT=8080',
         '-DVIP_PROTO=6', '-DVIP_PORT=80', '-DTABLE_SIZE=65537', '-DMAX_BACKENDS=256', '-DFLOWS=65536', '-DFLOW_SEED=0x78706f6c']
    if v6:
        d += [f'-DVIP6_{i}={w:#010x}' for i, w in enumerate(loaded_words('2001:db8::100'))]
        d += [f'-DOUTER_SRC6_{i}={w:#010x}' for i, w in enumerate(loaded_words('2001:db8::1'))]
    else:
        d += [f'-DVIP4={loaded_words("198.18.0.100")[0]:#010x}', f'-DOUTER_SRC4={loaded_words("198.18.0.1")[0]:#010x}']
    return d


def build(case, dir):
    v6, gue, nat = CASES[case]
    policy = os.path.join(dir, f'{case}.xpol')
    with open(policy, 'w') as f:
        f.write(policy_text(v6, gue, nat))
    xpol = os.path.join(dir, f'xpol-{case}.o')
    subprocess.run([os.path.join(ROOT, 'target/release/xpolc'), 'build', '-o', xpol, policy], check=True, capture_output=True)
    c = os.path.join(dir, f'c-{case}.o')
    subprocess.run(['clang-14', '-O2', '-g', '-target', 'bpf', '-c', *c_defines(v6, gue, nat), os.path.join(ROOT, 'bench/lb/katran_like.c'), '-o', c], check=True)
    return xpol, c


def ones_complement(b):
    s = sum(int.from_bytes(b[i:i + 2].ljust(2, b'\0'), 'big') for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff


def vip_packet(v6):
    """The benchmark's established-flow packet (checksums right)."""
    tcp = bytearray(struct.pack('>HHIIBBHHH', 40000, 80, 1, 0, 5 << 4, 0x10, 65535, 0, 0)) + bytes(10)
    eth = bytes([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1])
    if v6:
        src, dst = ipaddress.ip_address('2001:db8:7::7').packed, ipaddress.ip_address('2001:db8::100').packed
        struct.pack_into('>H', tcp, 16, ones_complement(src + dst + struct.pack('>IxxxB', len(tcp), 6) + tcp))
        return eth + b'\x86\xdd' + struct.pack('>IHBB', 0x60000000, len(tcp), 6, 64) + src + dst + tcp
    src, dst = ipaddress.ip_address('198.18.7.7').packed, ipaddress.ip_address('198.18.0.100').packed
    struct.pack_into('>H', tcp, 16, ones_complement(src + dst + struct.pack('>xBH', 6, len(tcp)) + tcp))
    ip = bytearray(struct.pack('>BBHHHBBH', 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0)) + src + dst
    struct.pack_into('>H', ip, 10, ones_complement(ip))
    return eth + b'\x08\x00' + bytes(ip) + tcp

# ------------------------------------------------------------------ the object


def read_elf(path, section):
    """The section's instructions, and the map or global each `lddw` at an
    instruction index refers to (relocations): {index: (symbol, section)}."""
    b = open(path, 'rb').read()
    shoff, = struct.unpack_from('<Q', b, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', b, 0x3a)
    secs = [dict(zip(('name', 'type', 'flags', 'addr', 'off', 'size', 'link', 'info'), struct.unpack_from('<IIQQQQII', b, shoff + i * shentsize))) for i in range(shnum)]

    def string(tab, off):
        start = secs[tab]['off'] + off
        return b[start:b.index(b'\0', start)].decode()
    for s in secs:
        s['name'] = string(shstrndx, s['name'])
    symtab = next(s for s in secs if s['type'] == 2)
    syms = []
    for i in range(symtab['size'] // 24):
        name, _info, _other, shndx, _value, _size = struct.unpack_from('<IBBHQQ', b, symtab['off'] + i * 24)
        syms.append((string(symtab['link'], name), shndx))
    idx = next(i for i, s in enumerate(secs) if s['name'] == section)
    code = b[secs[idx]['off']:secs[idx]['off'] + secs[idx]['size']]
    relocs = {}
    for r in secs:
        if r['type'] == 9 and r['info'] == idx:  # SHT_REL for this section
            for i in range(r['size'] // 16):
                off, info = struct.unpack_from('<QQ', b, r['off'] + i * 16)
                name, shndx = syms[info >> 32]
                relocs[off // 8] = (name or secs[shndx]['name'], secs[shndx]['name'])
    return [code[i:i + 8] for i in range(0, len(code), 8)], relocs


def map_shape(name):
    """(kind, value size, key size) of a map, by its name in either program."""
    if 'flows' in name:
        return ('hash', 8, 40)
    if name == 'nat' or name.endswith('_nat'):
        return ('hash', 20, 40)
    if name == 'backends' or name.endswith('_be'):
        return ('backends', 20, 4)
    if name == 'ring' or name.endswith('_ring'):
        return ('ring', 4, 4)
    if name in ('stats', 'vip_stats') or name.endswith('_stats'):
        return ('array', 24, 4)
    return ('array', 4096, 4)

# ------------------------------------------------------------------ the interpreter


class Machine:
    def __init__(self, path, v6, fib_success):
        self.insns, self.relocs = read_elf(path, 'xdp')
        self.v6 = v6
        self.fib_success = fib_success
        self.mem = {}
        self.maps = {}
        self.globals = {}
        self.next_free = 0x100000

    def alloc(self, n):
        a = self.next_free
        self.next_free += (n + 4095) // 4096 * 4096 + 4096
        return a

    def load(self, a, n):
        return int.from_bytes(bytes(self.mem.get(a + i, 0) for i in range(n)), 'little')

    def store(self, a, n, v):
        for i, x in enumerate((v & ((1 << (8 * n)) - 1)).to_bytes(n, 'little')):
            self.mem[a + i] = x

    def bytes_at(self, a, n):
        return bytes(self.mem.get(a + i, 0) for i in range(n))

    def map_lookup(self, name, key):
        kind, size, _ = map_shape(name)
        entries = self.maps.setdefault(name, {})
        if key in entries or kind == 'hash':
            return entries.get(key, 0)
        a = self.alloc(size)
        slot = int.from_bytes(key, 'little')
        if kind == 'backends' and slot < BACKENDS:
            for i, x in enumerate(backend(self.v6, slot).packed):
                self.mem[a + i] = x
            self.store(a + 16, 4, 1)  # BACKEND_PRESENT
        if kind == 'ring':
            self.store(a, 4, slot % BACKENDS)
        entries[key] = a
        return a

    def helper(self, n, r):
        if n == 1:  # bpf_map_lookup_elem
            name = r[1][1]
            return self.map_lookup(name, self.bytes_at(r[2], map_shape(name)[2]))
        if n == 2:  # bpf_map_update_elem
            name = r[1][1]
            _, size, key_size = map_shape(name)
            key = self.bytes_at(r[2], key_size)
            a = self.maps.setdefault(name, {}).get(key) or self.alloc(size)
            for i in range(size):
                self.mem[a + i] = self.mem.get(r[3] + i, 0)
            self.maps[name][key] = a
            return 0
        if n == 8:  # bpf_get_smp_processor_id
            return 0
        if n == 160:  # bpf_ktime_get_coarse_ns
            return 5 << 30
        if n == 23:  # bpf_redirect
            return 4
        if n == 44:  # bpf_xdp_adjust_head
            delta = r[2] - (1 << 64) if r[2] >> 63 else r[2]
            self.store(self.ctx + XDP_MD_DATA, 4, self.load(self.ctx + XDP_MD_DATA, 4) + delta)
            return 0
        if n == 69:  # bpf_fib_lookup: smac at 52, dmac at 58
            if not self.fib_success:
                return FIB_NOT_FWDED
            for i in range(6):
                self.mem[r[2] + 52 + i] = 0x10 + i
                self.mem[r[2] + 58 + i] = 0x20 + i
            return 0
        raise RuntimeError(f'helper {n} is not modelled')

    def run(self, packet, trace=None):
        """Runs the program on `packet`: (verdict, frame out, counts)."""
        counts = dict(insns=0, stack_loads=0, stack_stores=0, helpers=[], before_helper=[])
        headroom = 256
        pkt = self.alloc(headroom + len(packet))
        for i, x in enumerate(packet):
            self.mem[pkt + headroom + i] = x
        self.ctx = self.alloc(24)
        self.store(self.ctx + XDP_MD_DATA, 4, pkt + headroom)
        self.store(self.ctx + XDP_MD_DATA_END, 4, pkt + headroom + len(packet))
        self.store(self.ctx + XDP_MD_INGRESS, 4, 7)
        stack = self.alloc(512)
        r = [0] * 11
        r[1], r[10] = self.ctx, stack + 512
        on_stack = lambda a: stack <= a < stack + 512
        pc, since_helper = 0, 0
        while True:
            ins = self.insns[pc]
            if trace is not None:
                trace.append(pc)
            op, dst, src = ins[0], ins[1] & 0xf, ins[1] >> 4
            off, = struct.unpack_from('<h', ins, 2)
            imm, = struct.unpack_from('<i', ins, 4)
            cls = op & 7
            counts['insns'] += 1
            since_helper += 1
            if op == 0x18:  # lddw: a constant, a map, or a pointer into a global
                if pc in self.relocs:
                    name, section = self.relocs[pc]
                    if section in ('.maps', 'maps'):
                        r[dst] = ('map', name)
                    else:
                        r[dst] = self.globals.setdefault(name, self.alloc(0x10000)) + (imm & M32)
                else:
                    hi, = struct.unpack_from('<i', self.insns[pc + 1], 4)
                    r[dst] = ((hi & M32) << 32) | (imm & M32)
                pc += 2
                continue
            if cls in (0x04, 0x07):  # ALU, ALU64
                bits = 64 if cls == 0x07 else 32
                mask = (1 << bits) - 1
                code = op & 0xf0
                s = r[src] if op & 0x08 else imm
                if code == 0xb0 and isinstance(s, tuple):
                    r[dst] = s
                    pc += 1
                    continue
                if code == 0xd0:  # byte swap (to big-endian) or truncate (to little-endian)
                    v = r[dst] & ((1 << imm) - 1)
                    r[dst] = int.from_bytes(v.to_bytes(imm // 8, 'little'), 'big') if op & 0x08 else v
                    pc += 1
                    continue
                d, s = r[dst] & mask, s & mask
                shift = s & (bits - 1)
                signed = d - (1 << bits) if d >> (bits - 1) else d
                r[dst] = {0x00: lambda: d + s, 0x10: lambda: d - s, 0x20: lambda: d * s, 0x30: lambda: d // s if s else 0,
                          0x40: lambda: d | s, 0x50: lambda: d & s, 0x60: lambda: d << shift, 0x70: lambda: d >> shift,
                          0x80: lambda: -d, 0x90: lambda: d % s if s else d, 0xa0: lambda: d ^ s, 0xb0: lambda: s,
                          0xc0: lambda: signed >> shift}[code]() & mask
                pc += 1
                continue
            if cls in (0x05, 0x06):  # JMP, JMP32
                if op == 0x05:
                    pc += 1 + off
                    continue
                if op == 0x85:
                    if src != 0:
                        raise RuntimeError('a BPF-to-BPF call is not modelled')
                    counts['helpers'].append(imm)
                    counts['before_helper'].append(since_helper)
                    since_helper = 0
                    r[0] = self.helper(imm, r)
                    for i in range(1, 6):
                        r[i] = 0xdead0000 + i  # clobbered
                    pc += 1
                    continue
                if op == 0x95:
                    counts['before_helper'].append(since_helper)
                    data, end = self.load(self.ctx + XDP_MD_DATA, 4), self.load(self.ctx + XDP_MD_DATA_END, 4)
                    return r[0] & M32, self.bytes_at(data, end - data), counts
                bits = 64 if cls == 0x05 else 32
                mask = (1 << bits) - 1
                d, s = r[dst] & mask, (r[src] if op & 0x08 else imm) & mask
                sd = d - (1 << bits) if d >> (bits - 1) else d
                ss = s - (1 << bits) if s >> (bits - 1) else s
                taken = {0x10: d == s, 0x20: d > s, 0x30: d >= s, 0x40: d & s != 0, 0x50: d != s, 0x60: sd > ss, 0x70: sd >= ss,
                         0xa0: d < s, 0xb0: d <= s, 0xc0: sd < ss, 0xd0: sd <= ss}[op & 0xf0]
                pc += 1 + (off if taken else 0)
                continue
            size = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}[op & 0x18]
            if cls == 0x01:  # LDX
                a = r[src] + off
                counts['stack_loads'] += on_stack(a)
                r[dst] = self.load(a, size)
            elif cls in (0x02, 0x03):  # ST, STX (and atomic add)
                a = r[dst] + off
                counts['stack_stores'] += on_stack(a)
                if cls == 0x03 and op & 0xe0 == 0xc0:
                    if imm != 0:
                        raise RuntimeError('only atomic add is modelled')
                    self.store(a, size, self.load(a, size) + r[src])
                else:
                    self.store(a, size, r[src] if cls == 0x03 else imm)
            else:
                raise RuntimeError(f'opcode {op:#x} at {pc}')
            pc += 1


def disassembly(path):
    out = subprocess.run(['llvm-objdump-14', '-d', '--no-show-raw-insn', '--section=xdp', path], capture_output=True, text=True, check=True).stdout
    lines = {}
    for line in out.splitlines():
        head, _, rest = line.strip().partition(':')
        if head.isdigit():
            lines[int(head)] = rest.strip()
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--trace', choices=('xpol', 'c'), help='print the established, no-route run of that program instruction by instruction')
    ap.add_argument('--tx', action='store_true', help='with --trace: the run whose FIB lookup succeeds (XDP_TX) instead')
    ap.add_argument('cases', nargs='+', choices=sorted(CASES))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as dir:
        for case in args.cases:
            v6 = CASES[case][0]
            objects = dict(zip(('xpol', 'c'), build(case, dir)))
            packet = vip_packet(v6)
            for fib_success in (False, True):
                exit_ = 'tx' if fib_success else 'pass'
                outcomes = {}
                for who, path in objects.items():
                    m = Machine(path, v6, fib_success)
                    new = m.run(packet)
                    trace = [] if args.trace == who and fib_success == args.tx else None
                    established = m.run(packet, trace)
                    outcomes[who] = (new[:2], established[:2])
                    for flow, (verdict, _, c) in (('established', established), ('new', new)):
                        segments = ' '.join(f'{n}|{h}' for n, h in zip(c['before_helper'], c['helpers'] + ['exit']))
                        print(f'{case:5} {exit_:4} {flow:11} {who:4}: verdict {verdict}, {c["insns"]:3} insns, stack loads/stores {c["stack_loads"]:2}/{c["stack_stores"]:2}; insns|helper: {segments}')
                    if trace is not None:
                        lines = disassembly(path)
                        print('\n'.join(f'    {pc:5} {lines.get(pc, "?")}' for pc in trace))
                if outcomes['xpol'] != outcomes['c']:
                    sys.exit(f'{case} {exit_}: xpol and C differ: {outcomes}')


if __name__ == '__main__':
    main()
