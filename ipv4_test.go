package udpstream

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

// fixtureV4Options is a UDP datagram over IPv4 with 8 bytes of options,
// written out by hand. Its first byte is 0x47, which the old design called
// "unknown".
var fixtureV4Options = []byte{
	0x47, 0xb8, 0x00, 0x28, // version 4, IHL 7; TOS 0xb8 (EF); total length 40
	0x1c, 0x46, 0x40, 0x00, // ID 0x1c46; DF, offset 0
	0x3f, 0x11, 0x9a, 0x85, // TTL 63; UDP; header checksum
	0xc0, 0x00, 0x02, 0x01, // 192.0.2.1
	0xc6, 0x33, 0x64, 0x07, // 198.51.100.7
	0x94, 0x04, 0x00, 0x00, // Router Alert
	0x01, 0x01, 0x01, 0x00, // NOP NOP NOP EOL
	0xd4, 0x31, 0x23, 0x29, // 54321 -> 9001
	0x00, 0x0c, 0x3d, 0x6e, // UDP length 12; checksum
	'p', 'i', 'n', 'g',
}

// TestIPv4HeaderChecksum checks the header checksum against the fixture's,
// computed by hand:
//
//	47b8 + 0028 + 1c46 + 4000 + 3f11 + 0000 + c000 + 0201 + c633 + 6407
//	+ 9404 + 0000 + 0101 + 0100 = 0x36577; 0x3 + 0x6577 = 0x657a;
//	^0x657a = 0x9a85.
func TestIPv4HeaderChecksum(t *testing.T) {
	h := bytes.Clone(fixtureV4Options[:28])
	h[10], h[11] = 0, 0
	if got := ipv4HeaderChecksum(h); got != 0x9a85 {
		t.Errorf("ipv4HeaderChecksum = %#04x, want 0x9a85", got)
	}
	// Options are part of the header sum.
	h[27] = 1
	if got := ipv4HeaderChecksum(h); got != 0x9a84 {
		t.Errorf("with an option byte changed: %#04x, want 0x9a84", got)
	}
}

func ipv4Cases() []classifyCase {
	const id = 0xbeef
	payload := []byte("twelve bytes")

	plain := v4().udp(1000, testPort, payload)
	plainHdr := Header{
		Version: 4, Src: ap4(src4, 1000), Dst: ap4(dst4, testPort),
		TTL: 64, ID: 0x1234, Fragments: 1, UDPLength: 20,
		UDPChecksum: binary.BigEndian.Uint16(plain[26:]),
	}

	flagged := v4()
	flagged.tos, flagged.ttl, flagged.id, flagged.fo = 0x03, 1, 0xffff, 0x4000
	flaggedPkt := flagged.udp(1000, testPort, payload)
	flaggedHdr := plainHdr
	flaggedHdr.TOS, flaggedHdr.TTL, flaggedHdr.ID, flaggedHdr.DF = 0x03, 1, 0xffff, true
	flaggedHdr.UDPChecksum = binary.BigEndian.Uint16(flaggedPkt[26:])

	// The longest header: 40 bytes of options.
	maxOpts := bytes.Repeat([]byte{1}, 40)
	maxOpts[39] = 0
	long := v4()
	long.opts = maxOpts
	longPkt := long.udp(1000, testPort, payload)
	longHdr := plainHdr
	longHdr.Options = maxOpts
	longHdr.UDPChecksum = binary.BigEndian.Uint16(longPkt[66:])

	// A datagram in three fragments: 8+16 bytes, 16 bytes, 8 bytes.
	seg := udpSegment(src4[:], dst4[:], 1000, testPort, payloadOf(40))
	frag := func(fo uint16, data []byte) []byte {
		h := v4()
		h.id, h.fo, h.proto = id, fo, protoUDP
		return h.packet(data)
	}
	trimmed := frag(0x2000, seg[:20])
	first := frag(0x2000, seg[:24])
	middle := frag(0x2000|3, seg[24:40])
	last := frag(5, seg[40:])
	fragHdrWant := func(mf bool) *Header {
		return &Header{Version: 4, Src: ap4(src4, 0), Dst: ap4(dst4, 0), TTL: 64, ID: id, MF: mf, Fragments: 1}
	}
	optFrag := v4()
	optFrag.id, optFrag.fo, optFrag.proto = id, 0x2000, protoUDP
	optFrag.opts = []byte{0x94, 0x04, 0, 0}
	optFirst := optFrag.packet(seg[:24])
	dfLast := frag(0x4000|5, seg[40:])
	atLimit := frag(65480/8, payloadOf(35))

	tcp := v4()
	tcp.proto = 6
	// A TCP header whose ports sit where UDP's would: 1000 -> testPort.
	tcpSeg := []byte{0x03, 0xe8, 0x23, 0x29, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0}
	icmp := v4()
	icmp.proto = 1
	tcpFrag := v4()
	tcpFrag.proto, tcpFrag.fo = 6, 0x2000

	return append([]classifyCase{
		{name: "options", frame: fixtureV4Options, want: 4, verdict: deliver,
			hdr: &Header{
				Version: 4, Src: ap4(src4, 54321), Dst: ap4(dst4, testPort),
				TTL: 63, TOS: 0xb8, ID: 0x1c46, DF: true, Fragments: 1,
				Options:   []byte{0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00},
				UDPLength: 12, UDPChecksum: 0x3d6e,
			},
			payload: []byte("ping")},
		{name: "plain", frame: plain, want: 4, verdict: deliver, hdr: &plainHdr, payload: payload},
		{name: "TOS ECN TTL 1 ID ffff DF", frame: flaggedPkt, want: 4, verdict: deliver, hdr: &flaggedHdr, payload: payload},
		{name: "IHL 15", frame: longPkt, want: 4, verdict: deliver, hdr: &longHdr, payload: payload},
		{name: "reserved flag bit ignored", frame: edited(plain, func(b []byte) { b[6] |= 0x80; reseal4(b) }),
			want: 4, verdict: deliver, payload: payload},

		{name: "ethernet padding", frame: padded(plain, 14, 0), want: 4, verdict: deliver, hdr: &plainHdr, payload: payload},
		{name: "padding of junk", frame: padded(plain, 9, 0xa5), want: 4, verdict: deliver, hdr: &plainHdr, payload: payload},

		{name: "total length too big", want: 4, verdict: dropMalformedIPLength,
			frame: edited(plain, func(b []byte) { binary.BigEndian.PutUint16(b[2:], uint16(len(b)+1)); reseal4(b) })},
		{name: "total length takes in padding", want: 4, verdict: deliver, hdr: &plainHdr, payload: payload,
			// The IP layer counts a padding byte as payload; the UDP
			// length still bounds the datagram, as in the kernel.
			frame: edited(padded(plain, 4, 0), func(b []byte) {
				binary.BigEndian.PutUint16(b[2:], uint16(len(plain)+1))
				reseal4(b)
			})},
		{name: "total length below IHL", want: 4, verdict: dropMalformedIPLength,
			frame: edited(plain, func(b []byte) { binary.BigEndian.PutUint16(b[2:], 19); reseal4(b) })},
		{name: "total length 0", want: 4, verdict: dropMalformedIPLength,
			frame: edited(plain, func(b []byte) { binary.BigEndian.PutUint16(b[2:], 0); reseal4(b) })},
		{name: "total length inside UDP header", want: 4, verdict: dropMalformedUDPHeader,
			frame: edited(plain, func(b []byte) { binary.BigEndian.PutUint16(b[2:], 27); reseal4(b) })},
		{name: "total length too small", want: 4, verdict: dropMalformedUDPLength,
			frame: edited(plain, func(b []byte) { binary.BigEndian.PutUint16(b[2:], uint16(len(b)-1)); reseal4(b) })},
		{name: "IHL 4", want: 4, verdict: dropMalformedIPHeader,
			frame: edited(plain, func(b []byte) { b[0] = 0x44 })},
		{name: "IHL 0", want: 4, verdict: dropMalformedIPHeader,
			frame: edited(plain, func(b []byte) { b[0] = 0x40 })},
		{name: "IHL past the frame", want: 4, verdict: dropMalformedIPHeader,
			frame: edited(plain, func(b []byte) { b[0] = 0x4f })},
		{name: "IHL past total length", want: 4, verdict: dropMalformedIPLength,
			frame: edited(padded(plain, 40, 0), func(b []byte) { b[0] = 0x4f; reseal4(b) })},
		{name: "frame shorter than 20", want: 4, verdict: dropMalformedIPHeader, frame: plain[:19]},

		{name: "bad header checksum", want: 4, verdict: dropBadIPChecksum,
			frame: edited(plain, func(b []byte) { b[11] ^= 1 })},
		{name: "bad header checksum, UDP vouched", want: 4, flags: flagChecksumVouched, verdict: dropBadIPChecksum,
			frame: edited(plain, func(b []byte) { b[11] ^= 1 })},
		{name: "option changed under the checksum", want: 4, verdict: dropBadIPChecksum,
			frame: edited(fixtureV4Options, func(b []byte) { b[24] = 0x00 })},
		{name: "TTL changed under the checksum", want: 4, verdict: dropBadIPChecksum,
			frame: edited(plain, func(b []byte) { b[8]-- })},

		{name: "TCP to the port", want: 4, verdict: dropNotUDP, frame: tcp.packet(tcpSeg)},
		{name: "ICMP echo", want: 4, verdict: dropNotUDP, frame: icmp.packet([]byte{8, 0, 0xf7, 0xff, 0, 0, 0, 0})},
		{name: "other port", frame: plain, want: 4, port: testPort + 1, verdict: dropOtherPort, hdr: &plainHdr},

		{name: "first fragment", frame: first, want: 4, verdict: fragment, hdr: fragHdrWant(true),
			frag: &fragWant{id: id, offset: 0, more: true, head: first[:20], nextHeader: protoUDP, data: seg[:24]}},
		{name: "middle fragment", frame: middle, want: 4, verdict: fragment, hdr: fragHdrWant(true),
			frag: &fragWant{id: id, offset: 24, more: true, head: middle[:20], nextHeader: protoUDP, data: seg[24:40]}},
		{name: "last fragment", frame: last, want: 4, verdict: fragment, hdr: fragHdrWant(false),
			frag: &fragWant{id: id, offset: 40, more: false, head: last[:20], nextHeader: protoUDP, data: seg[40:]}},
		{name: "last fragment padded", frame: padded(last, 20, 0), want: 4, verdict: fragment,
			frag: &fragWant{id: id, offset: 40, more: false, head: last[:20], nextHeader: protoUDP, data: seg[40:]}},
		{name: "first fragment with options", frame: optFirst, want: 4, verdict: fragment,
			frag: &fragWant{id: id, offset: 0, more: true, head: optFirst[:24], nextHeader: protoUDP, data: seg[:24]}},
		{name: "fragment with DF", frame: dfLast, want: 4, verdict: fragment,
			frag: &fragWant{id: id, offset: 40, head: dfLast[:20], nextHeader: protoUDP, data: seg[40:]}},
		// The kernel trims a non-final fragment to a multiple of 8, and
		// one with no data discards its datagram in reassembly.
		{name: "non-final fragment not a multiple of 8, trimmed", frame: trimmed, want: 4, verdict: fragment,
			frag: &fragWant{id: id, offset: 0, more: true, head: trimmed[:20], nextHeader: protoUDP, data: seg[:16]}},
		{name: "empty first fragment", frame: frag(0x2000, nil), want: 4, verdict: fragment,
			frag: &fragWant{id: id, offset: 0, more: true, head: frag(0x2000, nil)[:20], nextHeader: protoUDP, data: []byte{}}},
		{name: "non-final fragment under 8 bytes, trimmed to empty", frame: frag(0x2001, seg[:7]), want: 4, verdict: fragment},
		{name: "empty last fragment", frame: frag(1, nil), want: 4, verdict: fragment},
		// 20 + 65480 + 35 = 65535: the largest datagram reassembly can make.
		{name: "fragment ending at 65535", frame: atLimit, want: 4, verdict: fragment,
			frag: &fragWant{id: id, offset: 65480, head: atLimit[:20], nextHeader: protoUDP, data: payloadOf(35)}},
		{name: "fragment ending past 65535", frame: frag(65480/8, payloadOf(36)), want: 4, verdict: dropMalformedFragment},
		{name: "fragment at the largest offset", frame: frag(0x1fff, payloadOf(8)), want: 4, verdict: dropMalformedFragment},
		{name: "fragment of TCP", frame: tcpFrag.packet(payloadOf(16)), want: 4, verdict: dropNotUDP},
		{name: "fragment with bad header checksum", frame: edited(middle, func(b []byte) { b[10] ^= 0x80 }), want: 4, verdict: dropBadIPChecksum},
	}, options4Cases()...)
}

// options4Cases are IPv4 options and source addresses the kernel accepts
// and refuses: ip_options_compile, ip_rcv_options, ip_route_input_slow.
func options4Cases() []classifyCase {
	pl := []byte("opt")
	with := func(opts ...byte) []byte {
		h := v4()
		h.opts = opts
		return h.udp(1000, testPort, pl)
	}
	from := func(src, dst string) []byte {
		h := v4()
		h.src, h.dst = netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
		return h.udp(1000, testPort, pl)
	}
	ok := func(name string, frame []byte) classifyCase {
		return classifyCase{name: name, frame: frame, want: 4, verdict: deliver, payload: pl}
	}
	bad := func(name string, frame []byte) classifyCase {
		return classifyCase{name: name, frame: frame, want: 4, verdict: dropBadOptions}
	}
	return []classifyCase{
		ok("unknown option skipped", with(0x1e, 4, 1, 2)),
		ok("Router Alert longer than 4", with(148, 6, 0, 0, 0, 0, 0, 0)),
		ok("Router Alert with a value", with(148, 4, 0, 1)),
		ok("garbage after End of Options", with(0, 0x44, 1, 0x99)),
		ok("Record Route full", with(7, 7, 8, 0, 0, 0, 0, 0)),
		ok("Timestamp full, overflow 14", with(68, 8, 9, 0xe0, 0, 0, 0, 0)),
		ok("Timestamp with an unknown flag", with(68, 8, 5, 2, 0, 0, 0, 0)),
		bad("length past the header", with(0x1e, 12, 0, 0)),
		bad("length 1", with(0x1e, 1, 0, 0)),
		bad("no room for the length", with(1, 1, 1, 0x1e)),
		bad("Router Alert of 3 bytes", with(148, 3, 0, 0)),
		bad("Record Route pointer 3", with(7, 7, 3, 0, 0, 0, 0, 0)),
		bad("Record Route pointer without room", with(7, 7, 5, 0, 0, 0, 0, 0)),
		bad("Record Route twice", with(7, 3, 4, 7, 3, 4, 0, 0)),
		bad("Timestamp pointer 4", with(68, 8, 4, 0, 0, 0, 0, 0)),
		bad("Timestamp shorter than 4", with(68, 3, 5, 0)),
		bad("Timestamp overflow at 15", with(68, 8, 9, 0xf0, 0, 0, 0, 0)),
		bad("Timestamp with addresses, no room", with(68, 8, 5, 1, 0, 0, 0, 0)),
		bad("Timestamp twice", with(68, 4, 5, 0, 68, 4, 5, 0)),
		bad("CIPSO", with(134, 10, 0, 0, 0, 1, 1, 4, 0, 0, 0, 0)),
		bad("loose source route, accept_source_route off", with(131, 7, 8, 192, 0, 2, 10, 0)),
		bad("strict source route with hops left", with(137, 7, 4, 192, 0, 2, 10, 0)),
		{name: "multicast source", frame: from("224.0.0.5", "198.51.100.7"), want: 4, verdict: dropMartian},
		{name: "limited broadcast source", frame: from("255.255.255.255", "198.51.100.7"), want: 4, verdict: dropMartian},
		{name: "unspecified source", frame: from("0.0.0.0", "198.51.100.7"), want: 4, verdict: dropMartian},
		ok("unspecified source to limited broadcast", from("0.0.0.0", "255.255.255.255")),
		ok("unspecified source to unspecified", from("0.0.0.0", "0.0.0.0")),
		ok("class E source", from("240.0.0.1", "198.51.100.7")),
	}
}

func TestClassifyIPv4(t *testing.T) { runClassifyCases(t, ipv4Cases()) }
