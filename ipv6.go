package udpstream

import (
	"encoding/binary"
	"net/netip"
)

const (
	ipv6HeaderLen     = 40
	ipv6FragHeaderLen = 8
	ipv6MaxPayload    = 65535

	nhHopByHop    = 0
	nhRouting     = 43
	nhFragment    = 44
	nhESP         = 50
	nhAH          = 51
	nhNoNext      = 59
	nhDestOptions = 60
	nhMobility    = 135
	nhHIP         = 139
	nhShim6       = 140
)

// parseIPv6 parses and validates an IPv6 packet (b starts at the version
// byte), walks its extension-header chain and, when it reaches UDP, parses
// the UDP header.
func parseIPv6(b []byte, port uint16, flags classifyFlags, p *parsed) verdict {
	if len(b) < ipv6HeaderLen {
		return dropMalformedIPHeader
	}
	// The header's fields are recorded before they are checked, so that
	// a packet dropped for them shows what it said.
	p.Version = 6
	vtf := binary.BigEndian.Uint32(b)
	p.TOS = uint8(vtf >> 20)
	p.FlowLabel = vtf & 0xfffff
	p.TTL = b[7]
	p.Src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), 0)
	p.Dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[24:40])), 0)
	p.Fragments = 1

	plen := int(binary.BigEndian.Uint16(b[4:]))
	if plen == 0 {
		// Payload length 0 means a Hop-by-Hop Jumbo Payload option
		// (RFC 2675), which no link here carries.
		return dropUnsupported
	}
	if ipv6HeaderLen+plen > len(b) {
		return dropMalformedIPLength
	}
	b = b[:ipv6HeaderLen+plen]
	p.ip = b
	if b[8] == 0xff {
		// A multicast source (RFC 4291, 2.7): ip6_rcv_core.
		return dropMartian
	}

	nh := b[6]
	off := ipv6HeaderLen
	for {
		switch nh {
		case protoUDP:
			p.l4 = b[off:]
			return parseUDP(p, b[8:40], port, flags)
		case nhHopByHop, nhRouting, nhDestOptions:
			if nh == nhHopByHop && off != ipv6HeaderLen {
				// Hop-by-Hop Options may only follow the IPv6 header.
				return dropMalformedExtHeader
			}
			if off+2 > len(b) {
				return dropMalformedExtHeader
			}
			n := (int(b[off+1]) + 1) * 8
			if off+n > len(b) {
				return dropMalformedExtHeader
			}
			h := b[off : off+n]
			if nh == nhRouting && !validRouting(h, b[24] == 0xff, &p.env) {
				return dropUnsupported
			}
			if nh != nhRouting && !validTLVs(h, nh == nhHopByHop, off, &p.env) {
				return dropBadOptions
			}
			if !p.pushExt(nh) {
				return dropUnsupported
			}
			nh = b[off]
			off += n
		case nhFragment:
			if off+ipv6FragHeaderLen > len(b) {
				return dropMalformedExtHeader
			}
			if !p.pushExt(nh) {
				return dropUnsupported
			}
			fh := b[off : off+ipv6FragHeaderLen]
			fo := binary.BigEndian.Uint16(fh[2:])
			offset := int(fo &^ 7)
			more := fo&1 != 0
			id := binary.BigEndian.Uint32(fh[4:])
			p.ID = id
			if offset == 0 && !more {
				// An atomic fragment (RFC 6946): a whole datagram that
				// carries a Fragment header; go on along the chain.
				nh = fh[0]
				off += ipv6FragHeaderLen
				continue
			}
			data := b[off+ipv6FragHeaderLen:]
			// The reassembled packet keeps the headers before the
			// fragmentable part and the Fragment header itself.
			limit := ipv6MaxPayload - (off - ipv6HeaderLen) - ipv6FragHeaderLen
			// An empty fragment reaches reassembly, where it discards
			// its datagram (ip6_frag_queue).
			if more && len(data)%8 != 0 || offset+len(data) > limit {
				return dropMalformedFragment
			}
			if v := fragmentChain(fh[0], data, offset == 0); v != fragment {
				return v
			}
			p.l4 = data
			p.frag = fragInfo{
				id:         id,
				offset:     offset,
				more:       more,
				head:       b[:off],
				nextHeader: fh[0],
				data:       data,
				ecn:        p.TOS & 3,
				timeout:    p.env.fragTimeout(6),
			}
			return fragment
		case nhESP, nhAH, nhMobility, nhHIP, nhShim6:
			return dropUnsupported
		default:
			// No Next Header, TCP, ICMPv6 and every other protocol.
			return dropNotUDP
		}
	}
}

// pushExt records an extension header type, reporting false when the chain
// is longer than maxExtHeaders.
func (p *parsed) pushExt(nh uint8) bool {
	if int(p.extN) >= len(p.ext) {
		return false
	}
	p.ext[p.extN] = nh
	p.extN++
	return true
}

// fragmentChain checks the header chain of a fragmentable part that starts
// with next header nh. Every fragment names the same first protocol, so a
// fragment of anything but UDP (or of a chain leading to it) is dropped
// here. The first fragment must carry the whole chain up to and including
// the UDP header (RFC 7112).
func fragmentChain(nh uint8, data []byte, first bool) verdict {
	off := 0
	for range maxExtHeaders {
		switch nh {
		case protoUDP:
			if first && off+udpHeaderLen > len(data) {
				return dropMalformedFragment
			}
			return fragment
		case nhRouting, nhDestOptions:
			if !first {
				return fragment
			}
			if off+2 > len(data) {
				return dropMalformedFragment
			}
			if nh == nhRouting && off+4 <= len(data) && data[off+3] != 0 {
				return dropUnsupported
			}
			n := (int(data[off+1]) + 1) * 8
			nh = data[off]
			off += n
		case nhHopByHop, nhFragment:
			return dropMalformedExtHeader
		case nhESP, nhAH, nhMobility, nhHIP, nhShim6:
			return dropUnsupported
		default:
			return dropNotUDP
		}
	}
	return dropUnsupported
}

// IPv6 option types with rules of their own (RFC 8200, 2711, 2675, 5570,
// 6275, 9486).
const (
	tlvPad1        = 0
	tlvPadN        = 1
	tlvRouterAlert = 5
	tlvCALIPSO     = 7
	tlvIOAM        = 49
	tlvJumbo       = 194
	tlvHomeAddress = 201
)

// validTLVs reports whether the kernel accepts the options of a Hop-by-Hop
// (hbh) or Destination Options header h, which starts at byte at of the
// packet: net/ipv6/exthdrs.c, ip6_parse_tlv and the option handlers.
func validTLVs(h []byte, hbh bool, at int, env *frameEnv) bool {
	r := env.netRules()
	maxCount, maxLen := r.maxDstOpts, r.maxDstLen
	if hbh {
		maxCount, maxLen = r.maxHBHOpts, r.maxHBHLen
	}
	if len(h) > maxLen {
		return false
	}
	// A negative count also refuses every unknown option.
	refuseUnknown := maxCount < 0
	if refuseUnknown {
		maxCount = -maxCount
	}
	count, pad := 0, 0
	for i := 2; i < len(h); {
		t := h[i]
		if t == tlvPad1 {
			// Padding is for alignment: never more than 7 bytes in a
			// row (RFC 4942, 2.1.9.5).
			if pad++; pad > 7 {
				return false
			}
			i++
			continue
		}
		if i+1 >= len(h) {
			return false
		}
		n := int(h[i+1]) + 2
		if n > len(h)-i {
			return false
		}
		if t == tlvPadN {
			if pad += n; pad > 7 {
				return false
			}
			for _, c := range h[i+2 : i+n] {
				if c != 0 {
					return false
				}
			}
			i += n
			continue
		}
		pad = 0
		if count++; count > maxCount {
			return false
		}
		switch {
		case hbh && t == tlvRouterAlert:
			if n != 4 {
				return false
			}
		case hbh && (t == tlvJumbo || t == tlvCALIPSO):
			// A Jumbo Payload belongs to a jumbogram, which no link
			// here carries; CALIPSO is validated against configured
			// domains, of which there are none unless set up.
			return false
		case hbh && t == tlvIOAM:
			// Ignored unless ioam6_enabled, but only when aligned.
			if (at+i)&3 != 0 {
				return false
			}
		case !hbh && t == tlvHomeAddress:
			// Mobile IPv6 refuses one it has no binding for; without
			// it the type's high bits say discard.
			return false
		default:
			// The two high bits of an unknown type say what to do:
			// 00 skip it, anything else discard the packet.
			if refuseUnknown || t>>6 != 0 {
				return false
			}
		}
		i += n
	}
	return true
}

// validRouting reports whether the kernel goes on past routing header h
// to the next header: net/ipv6/exthdrs.c, ipv6_rthdr_rcv. Only a route
// already done (Segments Left 0) of a type the kernel accepts, in a frame
// sent to this host's link address and an IPv6 unicast destination,
// reaches the transport.
func validRouting(h []byte, dstMulticast bool, env *frameEnv) bool {
	if dstMulticast || env.pktType != pktHost {
		return false
	}
	ifr := env.netRules().on(env.ifIndex)
	switch h[2] {
	case 2: // Mobile IPv6: only one the kernel processed itself
		if env.netRules().mip6 {
			return false
		}
	case 3: // RPL source route
		if !ifr.rpl {
			return false
		}
	case 4: // segment routing
		if !ifr.seg6 {
			return false
		}
	}
	return h[3] == 0
}
