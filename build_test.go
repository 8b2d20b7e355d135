package udpstream

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"unsafe"
)

// Test-only packet construction. Every checksum here comes from refSum, a
// direct transcription of RFC 1071, so the fixtures do not lean on the code
// they test.

const testPort = 9001

var (
	src4 = netip.MustParseAddr("192.0.2.1").As4()
	dst4 = netip.MustParseAddr("198.51.100.7").As4()
	src6 = netip.MustParseAddr("2001:db8::1").As16()
	dst6 = netip.MustParseAddr("2001:db8::2").As16()
)

// refSum is the RFC 1071 sum as the RFC states it: 16-bit big-endian words,
// an odd final byte padded with a zero byte, carries added back in.
func refSum(start uint16, b []byte) uint16 {
	s := uint32(start)
	for i := 0; i < len(b); i += 2 {
		w := uint32(b[i]) << 8
		if i+1 < len(b) {
			w |= uint32(b[i+1])
		}
		s += w
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// refUDPChecksum is the checksum field value for UDP segment seg (whose own
// checksum field is ignored) between the given addresses (4 or 16 bytes).
func refUDPChecksum(src, dst, seg []byte) uint16 {
	body := bytes.Clone(seg)
	body[6], body[7] = 0, 0
	c := ^refSum(refPseudoSum(src, dst, len(seg)), body)
	if c == 0 {
		c = 0xffff
	}
	return c
}

// refPseudoSum is the reference sum of a UDP pseudo-header.
func refPseudoSum(src, dst []byte, udpLen int) uint16 {
	var pseudo []byte
	pseudo = append(pseudo, src...)
	pseudo = append(pseudo, dst...)
	pseudo = append(pseudo, 0, protoUDP, byte(udpLen>>8), byte(udpLen))
	return refSum(0, pseudo)
}

// udpSegment builds a UDP header and payload with a correct checksum.
func udpSegment(src, dst []byte, sport, dport uint16, payload []byte) []byte {
	u := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	binary.BigEndian.PutUint16(u[6:], refUDPChecksum(src, dst, u))
	return u
}

// ip4 describes an IPv4 header; packet fills in IHL, total length and
// the header checksum.
type ip4 struct {
	tos, ttl uint8
	id       uint16
	fo       uint16 // flags and fragment offset, bytes 6-7
	proto    uint8
	src, dst [4]byte
	opts     []byte // a multiple of 4 bytes
}

// v4 is a typical header: the fields a test does not care about.
func v4() ip4 { return ip4{ttl: 64, id: 0x1234, src: src4, dst: dst4} }

func (h ip4) packet(l4 []byte) []byte {
	ihl := 20 + len(h.opts)
	b := make([]byte, ihl+len(l4))
	b[0] = 0x40 | byte(ihl/4)
	b[1] = h.tos
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], h.id)
	binary.BigEndian.PutUint16(b[6:], h.fo)
	b[8] = h.ttl
	b[9] = h.proto
	copy(b[12:], h.src[:])
	copy(b[16:], h.dst[:])
	copy(b[20:], h.opts)
	binary.BigEndian.PutUint16(b[10:], ^refSum(0, b[:ihl]))
	copy(b[ihl:], l4)
	return b
}

func (h ip4) udp(sport, dport uint16, payload []byte) []byte {
	h.proto = protoUDP
	return h.packet(udpSegment(h.src[:], h.dst[:], sport, dport, payload))
}

// extHdr is one IPv6 extension header, whole; packet overwrites its first
// byte with the next header.
type extHdr struct {
	typ uint8
	b   []byte
}

// optsHdr is a Hop-by-Hop or Destination Options header of n bytes (a
// multiple of 8) holding one PadN option, behind an option to skip (type
// 0x1e) when n is more than 8: Linux refuses more than 7 bytes of padding
// in a row.
func optsHdr(typ uint8, n int) extHdr {
	b := make([]byte, n)
	b[1] = byte(n/8 - 1)
	pad := 2
	if n > 8 {
		b[2], b[3] = 0x1e, byte(n-10)
		pad = n - 6
	}
	b[pad], b[pad+1] = 1, byte(n-pad-2)
	return extHdr{typ, b}
}

func hbh() extHdr      { return optsHdr(nhHopByHop, 8) }
func destOpts() extHdr { return optsHdr(nhDestOptions, 8) }

// routingHdr is an 8-byte routing header of an experimental type (RFC
// 4727): classify looks only at Segments Left.
func routingHdr(segLeft uint8) extHdr {
	return extHdr{nhRouting, []byte{0, 0, 253, segLeft, 0, 0, 0, 0}}
}

// fragHdr is an IPv6 Fragment header; offset is in bytes.
func fragHdr(offset int, more bool, id uint32) extHdr {
	b := make([]byte, 8)
	fo := uint16(offset)
	if more {
		fo |= 1
	}
	binary.BigEndian.PutUint16(b[2:], fo)
	binary.BigEndian.PutUint32(b[4:], id)
	return extHdr{nhFragment, b}
}

// ip6 describes an IPv6 header and its extension headers; packet fills in
// the payload length and every next-header field.
type ip6 struct {
	tc       uint8
	flow     uint32
	hop      uint8
	src, dst [16]byte
	exts     []extHdr
}

// v6 is a typical header carrying exts.
func v6(exts ...extHdr) ip6 { return ip6{hop: 64, src: src6, dst: dst6, exts: exts} }

func (h ip6) packet(nh uint8, l4 []byte) []byte {
	first := nh
	if len(h.exts) > 0 {
		first = h.exts[0].typ
	}
	b := make([]byte, 40)
	binary.BigEndian.PutUint32(b, 6<<28|uint32(h.tc)<<20|h.flow&0xfffff)
	b[6] = first
	b[7] = h.hop
	copy(b[8:], h.src[:])
	copy(b[24:], h.dst[:])
	for i, e := range h.exts {
		start := len(b)
		b = append(b, e.b...)
		b[start] = nh
		if i+1 < len(h.exts) {
			b[start] = h.exts[i+1].typ
		}
	}
	b = append(b, l4...)
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
	return b
}

func (h ip6) udp(sport, dport uint16, payload []byte) []byte {
	return h.packet(protoUDP, udpSegment(h.src[:], h.dst[:], sport, dport, payload))
}

// edited returns a copy of b changed by f.
func edited(b []byte, f func(b []byte)) []byte {
	b = bytes.Clone(b)
	f(b)
	return b
}

// reseal4 recomputes the IPv4 header checksum after an edit, so that the
// edit and not the checksum decides the verdict.
func reseal4(b []byte) {
	ihl := int(b[0]&0xf) * 4
	b[10], b[11] = 0, 0
	binary.BigEndian.PutUint16(b[10:], ^refSum(0, b[:ihl]))
}

// padded appends n bytes of link-layer padding of value v.
func padded(b []byte, n int, v byte) []byte {
	return append(bytes.Clone(b), bytes.Repeat([]byte{v}, n)...)
}

// payloadOf is a deterministic payload of n bytes.
func payloadOf(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}

// inside reports whether inner lies in outer's memory.
func inside(outer, inner []byte) bool {
	if len(inner) == 0 {
		return true
	}
	if len(outer) == 0 {
		return false
	}
	o := uintptr(unsafe.Pointer(unsafe.SliceData(outer)))
	i := uintptr(unsafe.Pointer(unsafe.SliceData(inner)))
	return i >= o && i+uintptr(len(inner)) <= o+uintptr(len(outer))
}

// startsAt reports whether s begins exactly at b's first byte.
func startsAt(b, s []byte) bool {
	return len(b) > 0 && len(s) > 0 && unsafe.SliceData(b) == unsafe.SliceData(s)
}

// checkViews checks what must hold of p's views after classify returned v
// for frame, whatever the frame held. It returns "" when all is well.
func checkViews(frame []byte, want uint8, port uint16, flags classifyFlags, v verdict, p *parsed) string {
	switch v {
	case deliver:
		if !startsAt(frame, p.ip) || len(p.ip) > len(frame) {
			return "p.ip is not a prefix of the frame"
		}
		switch p.Version {
		case 4:
			if n := int(binary.BigEndian.Uint16(frame[2:])); len(p.ip) != n {
				return "len(p.ip) != IPv4 total length"
			}
		case 6:
			if n := 40 + int(binary.BigEndian.Uint16(frame[4:])); len(p.ip) != n {
				return "len(p.ip) != 40 + IPv6 payload length"
			}
		default:
			return "Version is neither 4 nor 6"
		}
		if p.Version != want {
			return "delivered the other family"
		}
		if !inside(p.ip, p.udp) || !inside(p.ip, p.l4) || !inside(p.l4, p.udp) {
			return "p.udp or p.l4 outside p.ip"
		}
		if len(p.udp) < 8 || len(p.udp) != int(p.UDPLength) && !(p.Version == 6 && p.UDPLength == 0 && len(p.udp) == len(p.l4)) {
			return "len(p.udp) != UDPLength"
		}
		if binary.BigEndian.Uint16(p.udp[4:]) != p.UDPLength ||
			binary.BigEndian.Uint16(p.udp[6:]) != p.UDPChecksum ||
			binary.BigEndian.Uint16(p.udp[2:]) != p.Dst.Port() ||
			binary.BigEndian.Uint16(p.udp[0:]) != p.Src.Port() {
			return "UDP header fields disagree with p.udp"
		}
		if p.Dst.Port() != port {
			return "delivered to another port"
		}
		if !startsAt(p.l4, p.udp) {
			return "p.udp does not start the transport payload"
		}
		if p.Version == 6 && p.UDPChecksum == 0 {
			return "delivered a zero checksum over IPv6"
		}
		if flags&flagChecksumVouched == 0 && p.UDPChecksum != 0 {
			var s, d []byte
			if p.Version == 4 {
				s, d = p.ip[12:16], p.ip[16:20]
			} else {
				s, d = p.ip[8:24], p.ip[24:40]
			}
			if refUDPChecksum(s, d, p.udp) != p.UDPChecksum {
				return "delivered with a wrong UDP checksum"
			}
		}
		if p.Version == 4 && refSum(0, p.ip[:int(p.ip[0]&0xf)*4]) != 0xffff {
			return "delivered with a wrong IPv4 header checksum"
		}
	case fragment:
		f := p.frag
		if !inside(frame, f.data) {
			return "fragment data outside the frame"
		}
		if !startsAt(frame, f.head) || !inside(frame, f.head) {
			return "fragment head is not a prefix of the frame"
		}
		if !inside(p.ip, f.data) || !startsAt(frame, p.ip) {
			return "fragment data outside p.ip"
		}
		if f.more && len(f.data)%8 != 0 {
			return "non-final fragment not a multiple of 8 bytes"
		}
		if f.offset%8 != 0 {
			return "fragment offset not a multiple of 8"
		}
		if f.nextHeader == 6 {
			return "fragment of TCP"
		}
	}
	if int(p.extN) > len(p.ext) {
		return "extN past ext"
	}
	return ""
}

// TestBuilderMatchesFixtures pins the builder to hand-written bytes, so the
// generated fixtures elsewhere are known to be real packets.
func TestBuilderMatchesFixtures(t *testing.T) {
	h := ip4{tos: 0xb8, ttl: 0x3f, id: 0x1c46, fo: 0x4000, src: src4, dst: dst4,
		opts: []byte{0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00}}
	if got := h.udp(54321, testPort, []byte("ping")); !bytes.Equal(got, fixtureV4Options) {
		t.Errorf("ip4 builder:\n got % x\nwant % x", got, fixtureV4Options)
	}
	h6 := ip6{tc: 0xb8, flow: 0xabcde, hop: 33, src: src6, dst: dst6, exts: []extHdr{hbh(), destOpts()}}
	if got := h6.udp(54321, testPort, []byte("pong!")); !bytes.Equal(got, fixtureV6HBHDest) {
		t.Errorf("ip6 builder:\n got % x\nwant % x", got, fixtureV6HBHDest)
	}
}
