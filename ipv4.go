package udpstream

import (
	"encoding/binary"
	"net/netip"
)

const (
	ipv4MinHeaderLen = 20
	ipv4MaxDatagram  = 65535

	ipv4FlagDF      = 0x4000
	ipv4FlagMF      = 0x2000
	ipv4OffsetMask  = 0x1fff
	ipv4ReservedBit = 0x8000
)

// parseIPv4 parses and validates an IPv4 packet (b starts at the version
// byte) and, when it is UDP, its UDP header.
func parseIPv4(b []byte, port uint16, flags classifyFlags, p *parsed) verdict {
	if len(b) < ipv4MinHeaderLen {
		return dropMalformedIPHeader
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < ipv4MinHeaderLen || ihl > len(b) {
		return dropMalformedIPHeader
	}
	// The header's fields are recorded before they are checked, so that
	// a packet dropped for them shows what it said.
	p.Version = 4
	p.TOS = b[1]
	p.ID = uint32(binary.BigEndian.Uint16(b[4:]))
	fo := binary.BigEndian.Uint16(b[6:])
	p.DF = fo&ipv4FlagDF != 0
	p.MF = fo&ipv4FlagMF != 0
	p.TTL = b[8]
	proto := b[9]
	p.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[12:16])), 0)
	p.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[16:20])), 0)
	if ihl > ipv4MinHeaderLen {
		p.Options = b[ipv4MinHeaderLen:ihl:ihl]
	}
	p.Fragments = 1

	total := int(binary.BigEndian.Uint16(b[2:]))
	if total < ihl || total > len(b) {
		return dropMalformedIPLength
	}
	b = b[:total] // trim link-layer padding
	// A packet socket sees the packet before the IP layer has checked it.
	if fold(sumLE(0, b[:ihl])) != 0xffff {
		return dropBadIPChecksum
	}
	p.ip = b
	p.l4 = b[ihl:]

	if martianSource4(p.Src.Addr(), p.Dst.Addr()) {
		return dropMartian
	}
	if p.Options != nil && !validOptions4(p.Options, &p.env) {
		return dropBadOptions
	}
	if proto != protoUDP {
		return dropNotUDP
	}
	offset := int(fo&ipv4OffsetMask) * 8
	if p.MF || offset != 0 {
		data := p.l4
		if p.MF {
			// The kernel trims a non-last fragment to a multiple of 8
			// bytes (ip_frag_queue); one left empty discards its
			// datagram in reassembly.
			data = data[:len(data)&^7]
		}
		if offset+len(data) > ipv4MaxDatagram-ihl {
			return dropMalformedFragment
		}
		p.frag = fragInfo{
			id:         p.ID,
			offset:     offset,
			more:       p.MF,
			head:       b[:ihl],
			nextHeader: proto,
			data:       data,
			ecn:        p.TOS & 3,
			timeout:    p.env.fragTimeout(4),
		}
		return fragment
	}
	return parseUDP(p, b[12:20], port, flags)
}

// IPv4 option types the kernel checks (RFC 791, RFC 1108, RFC 2113).
const (
	ipoptEnd   = 0
	ipoptNOP   = 1
	ipoptRR    = 7
	ipoptTS    = 68
	ipoptLSRR  = 131
	ipoptCIPSO = 134
	ipoptSSRR  = 137
	ipoptRA    = 148

	ipoptTSAndAddr = 1
	ipoptTSPrespec = 3
)

// validOptions4 reports whether the kernel accepts the options o of a
// received datagram: net/ipv4/ip_options.c, ip_options_compile, then the
// source-route rules of ip_rcv_options. Options it does not know are
// accepted and ignored; everything after End of Options is ignored.
func validOptions4(o []byte, env *frameEnv) bool {
	var rr, ts bool
	srr := -1 // offset of a source-route option
	i := 0
loop:
	for i < len(o) {
		switch o[i] {
		case ipoptEnd:
			break loop
		case ipoptNOP:
			i++
			continue
		}
		if len(o)-i < 2 {
			return false
		}
		n := int(o[i+1])
		if n < 2 || n > len(o)-i {
			return false
		}
		opt := o[i : i+n]
		switch o[i] {
		case ipoptLSRR, ipoptSSRR:
			if n < 3 || opt[2] < 4 || srr >= 0 {
				return false
			}
			srr = i
		case ipoptRR:
			if rr || n < 3 || opt[2] < 4 || int(opt[2]) <= n && int(opt[2])+3 > n {
				return false
			}
			rr = true
		case ipoptTS:
			if ts || n < 4 || opt[2] < 5 {
				return false
			}
			ptr, flags := int(opt[2]), opt[3]&0xf
			if ptr <= n {
				if ptr+3 > n || (flags == ipoptTSAndAddr || flags == ipoptTSPrespec) && ptr+7 > n {
					return false
				}
			} else if flags != ipoptTSPrespec && opt[3]>>4 == 15 {
				return false // the overflow count would overflow
			}
			ts = true
		case ipoptRA:
			if n < 4 {
				return false
			}
		case ipoptCIPSO:
			// Validated against the configured CIPSO domains
			// (cipso_v4_validate), of which a host that has not set
			// any up (netlabelctl) has none.
			return false
		}
		i += n
	}
	if srr >= 0 {
		// Source routing is off unless accept_source_route is set on
		// the interface and for all (ip_rcv_options); when it is on, a
		// route with hops left is forwarded, not delivered here, and
		// ip_options_rcv_srr refuses one to a link broadcast.
		opt := o[srr:]
		if !env.netRules().on(env.ifIndex).sourceRoute4 || env.pktType != pktHost || int(opt[2]) <= int(opt[1]) {
			return false
		}
	}
	return true
}

// martianSource4 reports whether the kernel refuses src as the source of
// a datagram to dst whatever the host's addresses: a multicast or limited
// broadcast source, and 0.0.0.0 except to a broadcast (a host without an
// address asking, as DHCP does): net/ipv4/route.c, ip_route_input_slow;
// or to a link-local group, 224.0.0.0/24: ip_mc_validate_source. (Since
// Linux 5.3 the rest of 0.0.0.0/8 is an ordinary source: ipv4_is_zeronet.)
func martianSource4(src, dst netip.Addr) bool {
	s := src.As4()
	switch {
	case s[0] >= 224 && s[0] < 240, src == limitedBroadcast:
		return true
	case s == [4]byte{}:
		d := dst.As4()
		return dst != limitedBroadcast && dst != netip.IPv4Unspecified() && d != [4]byte{224, 0, 0, d[3]}
	}
	return false
}
