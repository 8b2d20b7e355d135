package udpstream

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

const (
	udpHeaderLen = 8
	protoUDP     = 17
)

// sumLE adds b to a ones'-complement accumulator. Words are loaded in
// little-endian order, which the ones'-complement sum tolerates (RFC 1071,
// byte-order independence): fold swaps the result back to network order.
func sumLE(acc uint64, b []byte) uint64 {
	var c uint64
	for len(b) >= 32 {
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[8:]), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[16:]), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[24:]), c)
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b), c)
		b = b[8:]
	}
	if len(b) >= 4 {
		acc, c = bits.Add64(acc, uint64(binary.LittleEndian.Uint32(b)), c)
		b = b[4:]
	}
	if len(b) >= 2 {
		acc, c = bits.Add64(acc, uint64(binary.LittleEndian.Uint16(b)), c)
		b = b[2:]
	}
	if len(b) == 1 {
		// An odd final byte is the high-order byte of a zero-padded
		// network-order word, which is the low byte in little-endian order.
		acc, c = bits.Add64(acc, uint64(b[0]), c)
	}
	acc, c = bits.Add64(acc, 0, c)
	return acc + c
}

// fold reduces an accumulator from sumLE to a 16-bit ones'-complement sum in
// network byte order (not complemented).
func fold(acc uint64) uint16 {
	acc = (acc >> 32) + (acc & 0xffffffff)
	acc = (acc >> 32) + (acc & 0xffffffff)
	acc = (acc >> 16) + (acc & 0xffff)
	acc = (acc >> 16) + (acc & 0xffff)
	return bits.ReverseBytes16(uint16(acc))
}

// pseudoSum is the accumulator for a UDP pseudo-header: addrs is the source
// address followed by the destination address exactly as they stand in the
// IP header (8 bytes for IPv4, 32 for IPv6); length is the UDP length.
func pseudoSum(addrs []byte, length uint16) uint64 {
	// Network-order words, added in the little-endian domain of sumLE. The
	// address sum can be near 2^64 (broadcast destinations), so the carry
	// out of this addition goes back in.
	acc, c := bits.Add64(sumLE(0, addrs), uint64(bits.ReverseBytes16(protoUDP))+uint64(bits.ReverseBytes16(length)), 0)
	return acc + c
}

// udpChecksum computes the value to place in a UDP header's checksum field
// for datagram u (header with a zero checksum field, and payload). It maps
// a computed zero to 0xffff, as RFC 768 requires.
func udpChecksum(addrs, u []byte) uint16 {
	c := ^fold(sumLE(pseudoSum(addrs, uint16(len(u))), u))
	if c == 0 {
		c = 0xffff
	}
	return c
}

// ipv4HeaderChecksum computes the header checksum of h, whose checksum
// field must be zero.
func ipv4HeaderChecksum(h []byte) uint16 {
	return ^fold(sumLE(0, h))
}

// parseUDP validates the UDP header at p.l4 (the IP payload) and fills the
// UDP fields of p. addrs are the IP source and destination bytes for the
// pseudo-header.
func parseUDP(p *parsed, addrs []byte, port uint16, flags classifyFlags) verdict {
	u := p.l4
	if len(u) < udpHeaderLen {
		return dropMalformedUDPHeader
	}
	// The header's fields are recorded before they are checked, so that
	// a datagram dropped for them shows what it said.
	sport := binary.BigEndian.Uint16(u[0:])
	dport := binary.BigEndian.Uint16(u[2:])
	field := binary.BigEndian.Uint16(u[4:])
	sum := binary.BigEndian.Uint16(u[6:])
	p.Src = netip.AddrPortFrom(p.Src.Addr(), sport)
	p.Dst = netip.AddrPortFrom(p.Dst.Addr(), dport)
	p.UDPLength = field
	p.UDPChecksum = sum
	ulen := int(field)
	if ulen == 0 && p.Version == 6 {
		// The rest of the IPv6 payload, as for a jumbogram (RFC 2675):
		// net/ipv6/udp.c, __udp6_lib_rcv.
		ulen = len(u)
	}
	if ulen < udpHeaderLen || ulen > len(u) {
		return dropMalformedUDPLength
	}
	u = u[:ulen]
	p.udp = u
	if sum == 0 {
		if p.Version == 6 {
			return dropZeroChecksum6
		}
	} else if flags&flagChecksumVouched == 0 {
		if fold(sumLE(pseudoSum(addrs, uint16(ulen)), u)) != 0xffff {
			return dropBadUDPChecksum
		}
	}
	if dport != port {
		return dropOtherPort
	}
	return deliver
}

// udpPorts records the UDP ports of b, the start of an IP datagram that
// is cut short, when its UDP header directly follows the IP header and is
// there whole.
func (p *parsed) udpPorts(b []byte) {
	off := 0
	switch {
	case p.Version == 4 && len(b) >= ipv4MinHeaderLen && b[9] == protoUDP:
		off = int(b[0]&0x0f) * 4
	case p.Version == 6 && len(b) >= ipv6HeaderLen && b[6] == protoUDP:
		off = ipv6HeaderLen
	default:
		return
	}
	if off < ipv4MinHeaderLen || len(b) < off+udpHeaderLen {
		return
	}
	u := b[off:]
	p.Src = netip.AddrPortFrom(p.Src.Addr(), binary.BigEndian.Uint16(u[0:]))
	p.Dst = netip.AddrPortFrom(p.Dst.Addr(), binary.BigEndian.Uint16(u[2:]))
	p.UDPLength = binary.BigEndian.Uint16(u[4:])
	p.UDPChecksum = binary.BigEndian.Uint16(u[6:])
}
