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
			if nh == nhRouting && b[off+3] != 0 {
				// Segments left: this host is not the final destination;
				// the kernel would forward or drop it, never deliver it.
				return dropUnsupported
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
			if more && len(data)%8 != 0 || len(data) == 0 || offset+len(data) > limit {
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
