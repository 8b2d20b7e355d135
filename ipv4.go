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

	if proto != protoUDP {
		return dropNotUDP
	}
	offset := int(fo&ipv4OffsetMask) * 8
	if p.MF || offset != 0 {
		data := p.l4
		if p.MF && len(data)%8 != 0 || len(data) == 0 || offset+len(data) > ipv4MaxDatagram-ihl {
			return dropMalformedFragment
		}
		p.frag = fragInfo{
			id:         p.ID,
			offset:     offset,
			more:       p.MF,
			head:       b[:ihl],
			nextHeader: proto,
			data:       data,
		}
		return fragment
	}
	return parseUDP(p, b[12:20], port, flags)
}
