package udpstream

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Classic BPF ancillary-data offsets (linux/filter.h), not in x/sys/unix.
const (
	skfAdOff     = 0xfffff000 // SKF_AD_OFF, -4096 as a uint32
	skfAdPktType = 4          // SKF_AD_PKTTYPE
	skfAdHatype  = 28         // SKF_AD_HATYPE: the device's ARPHRD_ type
	skfNetOff    = 0xfff00000 // SKF_NET_OFF, -0x100000: loads relative to the network header
	ethHeaderLen = 14
	bpfAccept    = 0xffffffff // snap length: the whole packet
)

// The classic BPF instructions the filters use.
const (
	ldAbsB = unix.BPF_LD | unix.BPF_B | unix.BPF_ABS
	ldAbsH = unix.BPF_LD | unix.BPF_H | unix.BPF_ABS
	ldIndH = unix.BPF_LD | unix.BPF_H | unix.BPF_IND
	ldxMsh = unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH
	jeq    = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
	jset   = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
	ja     = unix.BPF_JMP | unix.BPF_JA
	ret    = unix.BPF_RET | unix.BPF_K
)

// bpfInsn is an instruction whose jump targets are labels; "" means the
// next instruction.
type bpfInsn struct {
	code   uint16
	k      uint32
	jt, jf string
	label  string // set on a label pseudo-instruction
}

// portFilter builds the kernel filter of a packet socket of one family: it
// passes UDP to port (all UDP when allPorts), and the packets whose port
// only user space can judge (IP fragments, and IPv6 packets whose header
// chain starts with an extension header). It drops copies of outgoing
// packets and, unless otherHost, frames addressed to another host.
//
// The socket is of type SOCK_RAW, where offset 0 is the link-layer
// header, whose length depends on the link. On Ethernet and loopback it is
// 14 bytes and the filter loads at fixed offsets behind it; on any other
// link it loads relative to the IP header (SKF_NET_OFF), which kernels
// before 6.15 can do only while the headers are in the packet's linear
// part, as they are on such links (tun, WireGuard, tunnels) in practice.
func portFilter(family uint8, port uint16, allPorts, otherHost bool) ([]unix.SockFilter, error) {
	if family != 4 && family != 6 {
		return nil, fmt.Errorf("udpstream: no filter for IP version %d", family)
	}
	p := []bpfInsn{
		{code: ldAbsB, k: skfAdOff + skfAdPktType},
		{code: jeq, k: unix.PACKET_OUTGOING, jt: "drop"},
	}
	if !otherHost {
		p = append(p, bpfInsn{code: jeq, k: unix.PACKET_OTHERHOST, jt: "drop"})
	}
	p = append(p,
		bpfInsn{code: ldAbsH, k: skfAdOff + skfAdHatype},
		bpfInsn{code: jeq, k: unix.ARPHRD_ETHER, jt: "eth"},
		bpfInsn{code: jeq, k: unix.ARPHRD_LOOPBACK, jt: "eth"},
		bpfInsn{code: ja, jt: "net"},
		bpfInsn{label: "eth"},
	)
	p = append(p, portMatch(family, port, allPorts, ethHeaderLen, "eth.")...)
	p = append(p, bpfInsn{label: "net"})
	p = append(p, portMatch(family, port, allPorts, skfNetOff, "net.")...)
	p = append(p,
		bpfInsn{label: "accept"},
		bpfInsn{code: ret, k: bpfAccept},
		bpfInsn{label: "drop"},
		bpfInsn{code: ret, k: 0},
	)
	return assembleBPF(p)
}

// portMatch is the part of portFilter that reads the IP and UDP headers,
// with the IP header at offset base; it ends in a jump to "accept" or
// "drop". Its own labels start with prefix.
func portMatch(family uint8, port uint16, allPorts bool, base uint32, prefix string) []bpfInsn {
	var p []bpfInsn
	if family == 4 {
		p = []bpfInsn{
			{code: ldAbsB, k: base + 9}, // protocol
			{code: jeq, k: protoUDP, jf: "drop"},
			{code: ldAbsH, k: base + 6}, // flags and fragment offset
			{code: jset, k: ipv4FlagMF | ipv4OffsetMask, jt: "accept"},
			{code: ldxMsh, k: base},     // X = IHL * 4
			{code: ldIndH, k: base + 2}, // UDP destination port
		}
	} else {
		p = []bpfInsn{
			{code: ldAbsB, k: base + 6}, // next header
			{code: jeq, k: protoUDP, jt: prefix + "udp6"},
			{code: jeq, k: nhFragment, jt: "accept"},
			{code: jeq, k: nhHopByHop, jt: "accept"},
			{code: jeq, k: nhRouting, jt: "accept"},
			{code: jeq, k: nhDestOptions, jt: "accept"},
			{code: ja, jt: "drop"},
			{label: prefix + "udp6"},
			{code: ldAbsH, k: base + ipv6HeaderLen + 2}, // UDP destination port
		}
	}
	if allPorts {
		return append(p, bpfInsn{code: ja, jt: "accept"})
	}
	return append(p, bpfInsn{code: jeq, k: uint32(port), jt: "accept", jf: "drop"})
}

// dropAllFilter is a filter that keeps nothing: the port-reservation socket
// must never queue data.
var dropAllFilter = []unix.SockFilter{{Code: ret, K: 0}}

// assembleBPF resolves labels into the relative jump offsets of classic BPF.
func assembleBPF(src []bpfInsn) ([]unix.SockFilter, error) {
	at := map[string]int{}
	n := 0
	for _, in := range src {
		if in.label != "" {
			at[in.label] = n
			continue
		}
		n++
	}
	out := make([]unix.SockFilter, 0, n)
	target := func(label string, pc int) (int, error) {
		if label == "" {
			return 0, nil
		}
		t, ok := at[label]
		if !ok || t <= pc {
			return 0, fmt.Errorf("udpstream: filter label %q: not a forward jump", label)
		}
		return t - pc - 1, nil
	}
	for _, in := range src {
		if in.label != "" {
			continue
		}
		pc := len(out)
		jt, err := target(in.jt, pc)
		if err != nil {
			return nil, err
		}
		jf, err := target(in.jf, pc)
		if err != nil {
			return nil, err
		}
		f := unix.SockFilter{Code: in.code, K: in.k}
		if in.code&0x07 == unix.BPF_JMP && in.code&0xf0 == unix.BPF_JA {
			// An unconditional jump takes its offset in k.
			f.K = uint32(jt)
		} else {
			if jt > 255 || jf > 255 {
				return nil, fmt.Errorf("udpstream: filter jump too long")
			}
			f.Jt, f.Jf = uint8(jt), uint8(jf)
		}
		out = append(out, f)
	}
	return out, nil
}
