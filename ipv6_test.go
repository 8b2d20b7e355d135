package udpstream

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"
)

// fixtureV6HBHDest is a UDP datagram over IPv6 with a traffic class, a
// flow label, and Hop-by-Hop and Destination Options headers, written out
// by hand. Its first byte is 0x6b, which the old design called "unknown".
var fixtureV6HBHDest = []byte{
	0x6b, 0x8a, 0xbc, 0xde, // version 6; traffic class 0xb8; flow label 0xabcde
	0x00, 0x1d, 0x00, 0x21, // payload length 29; next header Hop-by-Hop; hop limit 33
	0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // 2001:db8::1
	0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // 2001:db8::2
	0x3c, 0x00, 0x01, 0x04, 0, 0, 0, 0, // Hop-by-Hop: next Destination Options; PadN
	0x11, 0x00, 0x01, 0x04, 0, 0, 0, 0, // Destination Options: next UDP; PadN
	0xd4, 0x31, 0x23, 0x29, // 54321 -> 9001
	0x00, 0x0d, 0xad, 0x2d, // UDP length 13; checksum
	'p', 'o', 'n', 'g', '!',
}

// chainOf is n Destination Options headers.
func chainOf(n int) []extHdr {
	e := make([]extHdr, n)
	for i := range e {
		e[i] = destOpts()
	}
	return e
}

// chained is an extension header as it stands in a fragmentable part: its
// next-header byte is set here, since the builder sees only opaque data.
func chained(e extHdr, next uint8) []byte {
	b := bytes.Clone(e.b)
	b[0] = next
	return b
}

func ipv6Cases() []classifyCase {
	const id = 0xfeedf00d
	payload := []byte("twelve bytes")

	plain := v6().udp(1000, testPort, payload)
	plainHdr := Header{
		Version: 6, Src: ap6(src6, 1000), Dst: ap6(dst6, testPort),
		TTL: 64, Fragments: 1, UDPLength: 20,
		UDPChecksum: binary.BigEndian.Uint16(plain[46:]),
	}
	// hdrOf is plainHdr for another packet carrying the same datagram.
	hdrOf := func(pkt []byte, change func(h *Header)) *Header {
		h := plainHdr
		h.UDPChecksum = binary.BigEndian.Uint16(pkt[len(pkt)-len(payload)-2:])
		if change != nil {
			change(&h)
		}
		return &h
	}

	tcFlow := v6()
	tcFlow.tc, tcFlow.flow = 0xff, 0xfffff
	tcFlowPkt := tcFlow.udp(1000, testPort, payload)
	tcLow := v6()
	tcLow.tc = 0x01
	tcLowPkt := tcLow.udp(1000, testPort, payload)
	flowHigh := v6()
	flowHigh.flow = 0x80000
	flowHighPkt := flowHigh.udp(1000, testPort, payload)

	atomic := v6(fragHdr(0, false, id)).udp(1000, testPort, payload)
	atomicChain := v6(hbh(), fragHdr(0, false, id), destOpts()).udp(1000, testPort, payload)
	routed := v6(routingHdr(0)).udp(1000, testPort, payload)
	bigDest := v6(optsHdr(nhDestOptions, 16)).udp(1000, testPort, payload)
	fullChain := v6(chainOf(maxExtHeaders)...).udp(1000, testPort, payload)

	// A datagram in three fragments: 8+16 bytes, 16 bytes, 8 bytes.
	seg := udpSegment(src6[:], dst6[:], 1000, testPort, payloadOf(40))
	frag := func(offset int, more bool, nh uint8, data []byte) []byte {
		return v6(fragHdr(offset, more, id)).packet(nh, data)
	}
	first := frag(0, true, protoUDP, seg[:24])
	middle := frag(24, true, protoUDP, seg[24:40])
	last := frag(40, false, protoUDP, seg[40:])
	fragHdrWant := &Header{Version: 6, Src: ap6(src6, 0), Dst: ap6(dst6, 0), TTL: 64, ID: id, Fragments: 1}
	afterHBH := v6(hbh(), fragHdr(0, true, id)).packet(protoUDP, seg[:24])
	destFirst := append(chained(destOpts(), protoUDP), seg[:16]...)
	destJustUDP := append(chained(destOpts(), protoUDP), seg[:8]...)
	destFirstPkt := frag(0, true, nhDestOptions, destFirst)
	destJustUDPPkt := frag(0, true, nhDestOptions, destJustUDP)
	laterDest := frag(24, true, nhDestOptions, payloadOf(16))
	// 0 + 65520 + 7 = 65527: with the Fragment header kept (8 bytes), the
	// reassembled payload is exactly 65535.
	atLimit := frag(65520, false, protoUDP, payloadOf(7))
	truncFrag := edited(frag(24, true, protoUDP, nil)[:44], func(b []byte) { binary.BigEndian.PutUint16(b[4:], 4) })

	tcpSeg := []byte{0x03, 0xe8, 0x23, 0x29, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0}

	return append([]classifyCase{
		{name: "HBH and Destination Options", frame: fixtureV6HBHDest, want: 6, verdict: deliver,
			hdr: &Header{
				Version: 6, Src: ap6(src6, 54321), Dst: ap6(dst6, testPort),
				TTL: 33, TOS: 0xb8, FlowLabel: 0xabcde, Fragments: 1,
				UDPLength: 13, UDPChecksum: 0xad2d,
			},
			ext: []uint8{nhHopByHop, nhDestOptions}, payload: []byte("pong!")},
		{name: "plain", frame: plain, want: 6, verdict: deliver, hdr: &plainHdr, payload: payload},
		{name: "traffic class ff flow fffff", frame: tcFlowPkt, want: 6, verdict: deliver, payload: payload,
			hdr: hdrOf(tcFlowPkt, func(h *Header) { h.TOS, h.FlowLabel = 0xff, 0xfffff })},
		// The traffic class straddles bytes 0 and 1; these pin its edges
		// against the flow label's.
		{name: "traffic class 01", frame: tcLowPkt, want: 6, verdict: deliver,
			hdr: hdrOf(tcLowPkt, func(h *Header) { h.TOS = 0x01 })},
		{name: "flow label 80000", frame: flowHighPkt, want: 6, verdict: deliver,
			hdr: hdrOf(flowHighPkt, func(h *Header) { h.FlowLabel = 0x80000 })},
		{name: "atomic fragment", frame: atomic, want: 6, verdict: deliver, payload: payload,
			hdr: hdrOf(atomic, func(h *Header) { h.ID = id }), ext: []uint8{nhFragment}},
		{name: "atomic fragment in a chain", frame: atomicChain, want: 6, verdict: deliver, payload: payload,
			hdr: hdrOf(atomicChain, func(h *Header) { h.ID = id }), ext: []uint8{nhHopByHop, nhFragment, nhDestOptions}},
		{name: "routing header, no segments left", frame: routed, want: 6, verdict: deliver, payload: payload,
			hdr: hdrOf(routed, nil), ext: []uint8{nhRouting}},
		{name: "16-byte Destination Options", frame: bigDest, want: 6, verdict: deliver, payload: payload,
			hdr: hdrOf(bigDest, nil), ext: []uint8{nhDestOptions}},
		{name: "chain of maxExtHeaders", frame: fullChain, want: 6, verdict: deliver, payload: payload,
			hdr: hdrOf(fullChain, nil), ext: slices.Repeat([]uint8{nhDestOptions}, maxExtHeaders)},
		{name: "ethernet padding", frame: padded(plain, 10, 0), want: 6, verdict: deliver, hdr: &plainHdr, payload: payload},
		{name: "padding of junk", frame: padded(fixtureV6HBHDest, 7, 0xff), want: 6, verdict: deliver, payload: []byte("pong!")},
		{name: "other port", frame: plain, want: 6, port: testPort - 1, verdict: dropOtherPort, hdr: &plainHdr},

		{name: "chain longer than maxExtHeaders", frame: v6(chainOf(maxExtHeaders+1)...).udp(1000, testPort, payload),
			want: 6, verdict: dropUnsupported},
		{name: "routing header in transit", frame: v6(routingHdr(1)).udp(1000, testPort, payload), want: 6, verdict: dropUnsupported},
		{name: "HBH not first", frame: v6(destOpts(), hbh()).udp(1000, testPort, payload), want: 6, verdict: dropMalformedExtHeader},
		{name: "HBH twice", frame: v6(hbh(), hbh()).udp(1000, testPort, payload), want: 6, verdict: dropMalformedExtHeader},
		{name: "extension header past the payload", want: 6, verdict: dropMalformedExtHeader,
			frame: edited(fixtureV6HBHDest, func(b []byte) { b[49] = 3 })},
		{name: "jumbogram", want: 6, verdict: dropUnsupported,
			frame: edited(fixtureV6HBHDest, func(b []byte) { b[4], b[5] = 0, 0 })},
		{name: "ESP", frame: v6().packet(nhESP, payloadOf(24)), want: 6, verdict: dropUnsupported},
		{name: "AH", frame: v6().packet(nhAH, payloadOf(24)), want: 6, verdict: dropUnsupported},
		{name: "ESP after Destination Options", frame: v6(destOpts()).packet(nhESP, payloadOf(24)), want: 6, verdict: dropUnsupported},
		{name: "No Next Header", frame: v6().packet(nhNoNext, payloadOf(8)), want: 6, verdict: dropNotUDP},
		{name: "No Next Header after HBH", frame: v6(hbh()).packet(nhNoNext, nil), want: 6, verdict: dropNotUDP},
		{name: "TCP to the port", frame: v6().packet(6, tcpSeg), want: 6, verdict: dropNotUDP},
		{name: "ICMPv6 echo", frame: v6().packet(58, []byte{128, 0, 0, 0, 0, 1, 0, 1}), want: 6, verdict: dropNotUDP},

		{name: "payload length too big", want: 6, verdict: dropMalformedIPLength,
			frame: edited(plain, func(b []byte) { b[5]++ })},
		{name: "payload length too big, with padding", want: 6, verdict: dropMalformedIPLength,
			frame: edited(padded(plain, 4, 0), func(b []byte) { b[5] += 5 })},
		{name: "payload length too small", want: 6, verdict: dropMalformedUDPLength,
			frame: edited(plain, func(b []byte) { b[5]-- })},
		{name: "payload length inside UDP header", want: 6, verdict: dropMalformedUDPHeader,
			frame: edited(plain, func(b []byte) { b[4], b[5] = 0, 7 })},
		{name: "frame shorter than 40", frame: plain[:39], want: 6, verdict: dropMalformedIPHeader},

		{name: "first fragment", frame: first, want: 6, verdict: fragment, hdr: fragHdrWant, ext: []uint8{nhFragment},
			frag: &fragWant{id: id, offset: 0, more: true, head: first[:40], nextHeader: protoUDP, data: seg[:24]}},
		{name: "middle fragment", frame: middle, want: 6, verdict: fragment, hdr: fragHdrWant, ext: []uint8{nhFragment},
			frag: &fragWant{id: id, offset: 24, more: true, head: middle[:40], nextHeader: protoUDP, data: seg[24:40]}},
		{name: "last fragment", frame: last, want: 6, verdict: fragment, hdr: fragHdrWant, ext: []uint8{nhFragment},
			frag: &fragWant{id: id, offset: 40, more: false, head: last[:40], nextHeader: protoUDP, data: seg[40:]}},
		{name: "last fragment padded", frame: padded(last, 16, 0), want: 6, verdict: fragment,
			frag: &fragWant{id: id, offset: 40, more: false, head: last[:40], nextHeader: protoUDP, data: seg[40:]}},
		{name: "fragment after HBH", frame: afterHBH, want: 6, verdict: fragment, hdr: fragHdrWant,
			ext:  []uint8{nhHopByHop, nhFragment},
			frag: &fragWant{id: id, offset: 0, more: true, head: afterHBH[:48], nextHeader: protoUDP, data: seg[:24]}},
		{name: "first fragment with Destination Options", frame: destFirstPkt, want: 6, verdict: fragment,
			frag: &fragWant{id: id, offset: 0, more: true, head: destFirstPkt[:40], nextHeader: nhDestOptions, data: destFirst}},
		{name: "first fragment ending with the UDP header", frame: destJustUDPPkt, want: 6, verdict: fragment,
			frag: &fragWant{id: id, offset: 0, more: true, head: destJustUDPPkt[:40], nextHeader: nhDestOptions, data: destJustUDP}},
		{name: "later fragment of a Destination Options chain", frame: laterDest, want: 6, verdict: fragment,
			frag: &fragWant{id: id, offset: 24, more: true, head: laterDest[:40], nextHeader: nhDestOptions, data: payloadOf(16)}},
		{name: "fragment ending at the limit", frame: atLimit, want: 6, verdict: fragment,
			frag: &fragWant{id: id, offset: 65520, head: atLimit[:40], nextHeader: protoUDP, data: payloadOf(7)}},
		{name: "fragment ending past the limit", frame: frag(65520, false, protoUDP, payloadOf(8)), want: 6, verdict: dropMalformedFragment},

		{name: "first fragment without a whole UDP header", want: 6, verdict: dropMalformedFragment,
			frame: frag(0, true, nhDestOptions, chained(destOpts(), protoUDP))},
		{name: "first fragment cut inside a Destination Options header", want: 6, verdict: dropMalformedFragment,
			frame: frag(0, true, nhDestOptions, chained(optsHdr(nhDestOptions, 16), protoUDP)[:8])},
		{name: "non-final fragment not a multiple of 8", frame: frag(0, true, protoUDP, seg[:20]), want: 6, verdict: dropMalformedFragment},
		// An empty fragment discards its datagram in reassembly.
		{name: "empty fragment", frame: frag(8, true, protoUDP, nil), want: 6, verdict: fragment},
		{name: "empty last fragment", frame: frag(8, false, protoUDP, nil), want: 6, verdict: fragment},
		{name: "Fragment header cut short", frame: truncFrag, want: 6, verdict: dropMalformedExtHeader},
		{name: "first fragment of TCP", frame: frag(0, true, 6, payloadOf(24)), want: 6, verdict: dropNotUDP},
		{name: "later fragment of TCP", frame: frag(24, false, 6, payloadOf(10)), want: 6, verdict: dropNotUDP},
		{name: "HBH inside the fragmentable part", want: 6, verdict: dropMalformedExtHeader,
			frame: frag(0, true, nhHopByHop, append(chained(hbh(), protoUDP), seg[:16]...))},
		{name: "Fragment header inside the fragmentable part", want: 6, verdict: dropMalformedExtHeader,
			frame: frag(0, true, nhFragment, append(chained(fragHdr(0, false, 1), protoUDP), seg[:16]...))},
		{name: "routing in transit inside the first fragment", want: 6, verdict: dropUnsupported,
			frame: frag(0, true, nhRouting, append(chained(routingHdr(2), protoUDP), seg[:16]...))},
		{name: "fragment of ESP", frame: frag(0, true, nhESP, payloadOf(16)), want: 6, verdict: dropUnsupported},
	}, options6Cases()...)
}

// options6Cases are IPv6 options, routing headers and chains the kernel
// accepts and refuses: ip6_parse_tlv, ipv6_rthdr_rcv, ip6_rcv_core.
func options6Cases() []classifyCase {
	pl := []byte("opt6")
	// opts is an options header of type typ holding body, padded with
	// Pad1 to a multiple of 8.
	opts := func(typ uint8, body ...byte) extHdr {
		b := append([]byte{0, 0}, body...)
		for len(b)%8 != 0 {
			b = append(b, 0)
		}
		b[1] = byte(len(b)/8 - 1)
		return extHdr{typ, b}
	}
	routing := func(typ, left uint8) extHdr { return extHdr{nhRouting, []byte{0, 0, typ, left, 0, 0, 0, 0}} }
	ok := func(name string, e ...extHdr) classifyCase {
		return classifyCase{name: name, frame: v6(e...).udp(1000, testPort, pl), want: 6, verdict: deliver, payload: pl}
	}
	bad := func(name string, v verdict, e ...extHdr) classifyCase {
		return classifyCase{name: name, frame: v6(e...).udp(1000, testPort, pl), want: 6, verdict: v}
	}
	var long, tooLong []extHdr
	for range 12 {
		long = append(long, destOpts())
	}
	for range maxExtHeaders + 1 {
		tooLong = append(tooLong, destOpts())
	}
	mcastSrc := v6()
	mcastSrc.src = netip.MustParseAddr("ff02::1").As16()
	zeroLen := v6().udp(1000, testPort, pl)
	zeroLen[44], zeroLen[45], zeroLen[46], zeroLen[47] = 0, 0, 0, 0
	binary.BigEndian.PutUint16(zeroLen[46:], ^refSum(refPseudoSum(src6[:], dst6[:], len(zeroLen)-40), zeroLen[40:]))
	return []classifyCase{
		ok("unknown option skipped", opts(nhDestOptions, 0x1e, 2, 0, 0)),
		ok("seven bytes of padding", opts(nhDestOptions, 0x1e, 5, 0, 0, 0, 0, 0, 1, 5, 0, 0, 0, 0, 0)),
		ok("Router Alert", opts(nhHopByHop, 5, 2, 0, 0)),
		ok("eight options", opts(nhDestOptions, 0x1e, 0, 0x1e, 0, 0x1e, 0, 0x1e, 0, 0x1e, 0, 0x1e, 0, 0x1e, 0, 0x1e, 0)),
		ok("IOAM aligned, not enabled", opts(nhHopByHop, 1, 0, 49, 2, 0, 0)),
		ok("routing header type 0, done", routing(0, 0)),
		ok("a chain of 12 Destination Options headers", long...),
		bad("unknown option, discard", dropBadOptions, opts(nhDestOptions, 0x5e, 2, 0, 0)),
		bad("unknown option, discard and report", dropBadOptions, opts(nhDestOptions, 0x9e, 2, 0, 0)),
		bad("unknown option, discard and report unless multicast", dropBadOptions, opts(nhHopByHop, 0xde, 2, 0, 0)),
		bad("eight bytes of Pad1", dropBadOptions, opts(nhDestOptions, 0, 0, 0, 0, 0, 0, 0, 0)),
		bad("PadN of 8", dropBadOptions, opts(nhDestOptions, 1, 6, 0, 0, 0, 0, 0, 0)),
		bad("PadN with data", dropBadOptions, opts(nhDestOptions, 1, 2, 0, 1)),
		bad("option past the header", dropBadOptions, opts(nhDestOptions, 0x1e, 10, 0, 0)),
		bad("nine options", dropBadOptions, opts(nhDestOptions, 0x1e, 0, 0x1e, 0, 0x1e, 0, 0x1e, 0, 0x1e, 0, 0x1e, 0, 0x1e, 0, 0x1e, 0, 0x1e, 0)),
		bad("Jumbo Payload outside a jumbogram", dropBadOptions, opts(nhHopByHop, 194, 4, 0, 1, 0, 0)),
		bad("Router Alert of 3 bytes", dropBadOptions, opts(nhHopByHop, 5, 1, 0)),
		bad("IOAM misaligned", dropBadOptions, opts(nhHopByHop, 49, 2, 0, 0)),
		bad("Home Address", dropBadOptions, opts(nhDestOptions, 201, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)),
		bad("routing header type 2, not processed here (Mobile IPv6)", dropUnsupported, routing(2, 0)),
		bad("routing header type 4, seg6 off", dropUnsupported, routing(4, 0)),
		bad("routing header type 3, RPL off", dropUnsupported, routing(3, 0)),
		bad("routing header with segments left", dropUnsupported, routing(0, 1)),
		bad("a chain longer than maxExtHeaders", dropUnsupported, tooLong...),
		{name: "multicast source", frame: mcastSrc.udp(1000, testPort, pl), want: 6, verdict: dropMartian},
		{name: "UDP length 0: the payload length", frame: zeroLen, want: 6, verdict: deliver, payload: pl},
	}
}

func TestClassifyIPv6(t *testing.T) { runClassifyCases(t, ipv6Cases()) }
