package udpstream

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// refAcc is the network-order 16-bit sum that a sumLE accumulator stands
// for: its four 16-bit pieces added with end-around carry, then swapped
// out of the little-endian domain sumLE works in.
func refAcc(acc uint64) uint16 {
	var s uint32
	for i := range 4 {
		s += uint32(acc>>(16*i)) & 0xffff
		s = s&0xffff + s>>16
	}
	return uint16(s)<<8 | uint16(s)>>8
}

// TestRefSum pins the reference itself to RFC 1071's worked example
// (section 3: 0001 f203 f4f5 f6f7 sums to ddf2).
func TestRefSum(t *testing.T) {
	if got := refSum(0, []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}); got != 0xddf2 {
		t.Fatalf("refSum = %#04x, want 0xddf2", got)
	}
	if got := refSum(0, []byte{0xab}); got != 0xab00 {
		t.Fatalf("odd byte: refSum = %#04x, want 0xab00", got)
	}
}

// TestSumLE compares sumLE and fold with the reference over random buffers
// of every length up to 300, unaligned, from random accumulators.
func TestSumLE(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 300+8)
	accs := []uint64{0, 1, 0xffff, 0xffffffff, 1 << 63, ^uint64(0), ^uint64(0) - 1}
	for n := 0; n <= 300; n++ {
		for trial := range 8 {
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			switch trial {
			case 0:
				// All ones makes every addition carry.
				for i := range buf {
					buf[i] = 0xff
				}
			case 1:
				clear(buf)
			}
			off := trial % 8
			b := buf[off : off+n]
			acc := rng.Uint64()
			if trial < len(accs) {
				acc = accs[trial]
			}
			want := refSum(refAcc(acc), b)
			if got := fold(sumLE(acc, b)); got != want {
				t.Fatalf("len %d, acc %#x, trial %d: fold(sumLE) = %#04x, want %#04x", n, acc, trial, got, want)
			}
		}
	}
}

// TestSumLEChained checks that sums over consecutive even-length pieces
// add up to the sum over the whole, as pseudoSum and parseUDP rely on.
func TestSumLEChained(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	b := make([]byte, 200)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	for cut := 0; cut <= len(b); cut += 2 {
		if got, want := fold(sumLE(sumLE(0, b[:cut]), b[cut:])), refSum(0, b); got != want {
			t.Fatalf("cut %d: %#04x, want %#04x", cut, got, want)
		}
	}
}

func TestFold(t *testing.T) {
	for _, acc := range []uint64{0, 1, 0xfffe, 0xffff, 0x10000, 0x1ffff, 0xffffffff, 0x100000000,
		0xffff0000ffff0000, 0x0000ffff0000ffff, ^uint64(0), ^uint64(0) - 1, 1 << 63} {
		if got, want := fold(acc), refAcc(acc); got != want {
			t.Errorf("fold(%#x) = %#04x, want %#04x", acc, got, want)
		}
	}
}

// Hand-built datagrams. The arithmetic in each comment sums 16-bit words:
// the pseudo-header (addresses, protocol 0x0011, UDP length), the UDP
// header with a zero checksum field (ports 1234 = 0x04d2 and 5678 =
// 0x162e, length), then the payload, an odd final byte padded with zero.
var handChecksums = []struct {
	name     string
	src, dst []byte
	payload  []byte
	want     uint16
}{
	{
		// 192.0.2.1 -> 192.0.2.2, "hi", length 10:
		// c000+0201+c000+0202+0011+000a = 0x1841e
		// + 04d2+162e+000a+0000 = 0x19f28; + 6869 = 0x20791
		// fold 0x2+0x0791 = 0x0793; ^0x0793 = 0xf86c
		name: "v4 even", src: []byte{192, 0, 2, 1}, dst: []byte{192, 0, 2, 2},
		payload: []byte("hi"), want: 0xf86c,
	},
	{
		// "abc", length 11:
		// c000+0201+c000+0202+0011+000b = 0x1841f
		// + 04d2+162e+000b+0000 = 0x19f2a; + 6162+6300 = 0x2638c
		// fold 0x2+0x638c = 0x638e; ^0x638e = 0x9c71
		name: "v4 odd", src: []byte{192, 0, 2, 1}, dst: []byte{192, 0, 2, 2},
		payload: []byte("abc"), want: 0x9c71,
	},
	{
		// Payload 60 d6 is chosen to make the sum 0xffff:
		// 0x19f28 (as for "hi") + 60d6 = 0x1fffe; fold 0x1+0xfffe = 0xffff;
		// ^0xffff = 0, which RFC 768 sends as 0xffff.
		name: "v4 computed zero", src: []byte{192, 0, 2, 1}, dst: []byte{192, 0, 2, 2},
		payload: []byte{0x60, 0xd6}, want: 0xffff,
	},
	{
		// 2001:db8::1 -> 2001:db8::2, "hello", length 13:
		// 2001+0db8+0001 + 2001+0db8+0002 = 0x5b75; + 000d+0011 = 0x5b93
		// + 04d2+162e+000d+0000 = 0x76a0
		// + 6865+6c6c+6f00 = 0x1ba71; fold 0x1+0xba71 = 0xba72; ^ = 0x458d
		name: "v6 odd", src: src6[:], dst: dst6[:],
		payload: []byte("hello"), want: 0x458d,
	},
	{
		// "hi!!", length 12:
		// 0x5b75 + 000c+0011 = 0x5b92; + 04d2+162e+000c+0000 = 0x769e
		// + 6869+2121 = 0x10028; fold 0x1+0x0028 = 0x0029; ^ = 0xffd6
		name: "v6 even", src: src6[:], dst: dst6[:],
		payload: []byte("hi!!"), want: 0xffd6,
	},
}

func TestUDPChecksumByHand(t *testing.T) {
	for _, c := range handChecksums {
		t.Run(c.name, func(t *testing.T) {
			u := make([]byte, 8+len(c.payload))
			binary.BigEndian.PutUint16(u[0:], 1234)
			binary.BigEndian.PutUint16(u[2:], 5678)
			binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
			copy(u[8:], c.payload)
			addrs := append(bytes.Clone(c.src), c.dst...)
			if got := udpChecksum(addrs, u); got != c.want {
				t.Errorf("udpChecksum = %#04x, want %#04x", got, c.want)
			}
			if got := refUDPChecksum(c.src, c.dst, u); got != c.want {
				t.Errorf("reference = %#04x, want %#04x (the test's own arithmetic is off)", got, c.want)
			}

			// The same datagram in a packet, checksum in place, is delivered.
			binary.BigEndian.PutUint16(u[6:], c.want)
			var frame []byte
			want := uint8(4)
			if len(c.src) == 4 {
				h := v4()
				h.proto, h.src, h.dst = protoUDP, [4]byte(c.src), [4]byte(c.dst)
				frame = h.packet(u)
			} else {
				want = 6
				frame = v6().packet(protoUDP, u)
			}
			var p parsed
			if v := classify(frame, want, 5678, 0, &p); v != deliver {
				t.Errorf("classify: %s, want deliver", verdictName(v))
			}
			if p.UDPChecksum != c.want {
				t.Errorf("UDPChecksum = %#04x, want %#04x", p.UDPChecksum, c.want)
			}
			// One bit off anywhere in the datagram is caught.
			for i := range u {
				if i == 6 || i == 7 {
					continue
				}
				bad := bytes.Clone(frame)
				bad[len(frame)-len(u)+i] ^= 0x10
				v := classify(bad, want, 5678, 0, &p)
				if v == deliver {
					t.Errorf("byte %d of the datagram flipped: delivered", i)
				}
			}
		})
	}
}

// TestUDPChecksumRandom checks udpChecksum against the reference over
// random addresses, lengths and payloads, with addresses made of 0xff
// bytes often enough to reach the carries out of the pseudo-header sum.
func TestUDPChecksumRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range 20000 {
		alen := 4
		if i%2 == 1 {
			alen = 16
		}
		addrs := make([]byte, 2*alen)
		for j := range addrs {
			if rng.IntN(4) == 0 {
				addrs[j] = byte(rng.Uint32())
			} else {
				addrs[j] = 0xff
			}
		}
		u := make([]byte, 8+rng.IntN(1500))
		for j := range u {
			u[j] = byte(rng.Uint32())
		}
		binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
		u[6], u[7] = 0, 0
		want := refUDPChecksum(addrs[:alen], addrs[alen:], u)
		if got := udpChecksum(addrs, u); got != want {
			t.Fatalf("addrs % x, len %d: udpChecksum = %#04x, want %#04x", addrs, len(u), got, want)
		}
	}
}

// TestBroadcastChecksum delivers a broadcast datagram whose pseudo-header
// words sum to nearly 2^64 in sumLE's domain: 10.0.255.255 ->
// 255.255.255.255 with UDP length 0x00f7. Losing the carry there would
// reject a valid datagram.
func TestBroadcastChecksum(t *testing.T) {
	h := v4()
	h.src = netip.MustParseAddr("10.0.255.255").As4()
	h.dst = netip.MustParseAddr("255.255.255.255").As4()
	frame := h.udp(1000, testPort, payloadOf(0xf7-8))
	var p parsed
	if v := classify(frame, 4, testPort, 0, &p); v != deliver {
		t.Fatalf("verdict %s, want deliver", verdictName(v))
	}
	u := bytes.Clone(p.udp)
	u[6], u[7] = 0, 0
	if got, want := udpChecksum(frame[12:20], u), p.UDPChecksum; got != want {
		t.Errorf("udpChecksum = %#04x, want %#04x", got, want)
	}
}

func udpCases() []classifyCase {
	payload := []byte("datagram")
	p4 := v4().udp(1000, testPort, payload)
	p6 := v6().udp(1000, testPort, payload)
	base4 := Header{Version: 4, Src: ap4(src4, 1000), Dst: ap4(dst4, testPort), TTL: 64, ID: 0x1234, Fragments: 1, UDPLength: 16}
	base6 := Header{Version: 6, Src: ap6(src6, 1000), Dst: ap6(dst6, testPort), TTL: 64, Fragments: 1, UDPLength: 16}
	// The UDP header starts at 20 over IPv4 and at 40 over IPv6.
	udp4 := func(f func(u []byte)) []byte { return edited(p4, func(b []byte) { f(b[20:]) }) }
	udp6 := func(f func(u []byte)) []byte { return edited(p6, func(b []byte) { f(b[40:]) }) }
	zero := func(u []byte) { u[6], u[7] = 0, 0 }
	wrong := func(u []byte) { u[7] ^= 0x01 }
	zeroHdr4 := base4
	wrongHdr4 := base4
	wrongHdr4.UDPChecksum = binary.BigEndian.Uint16(p4[26:]) ^ 1
	wrongHdr6 := base6
	wrongHdr6.UDPChecksum = binary.BigEndian.Uint16(p6[46:]) ^ 1

	// UDP says 11 bytes; the IP payload carries 2 more, which go unread.
	short := udpSegment(src4[:], dst4[:], 1000, testPort, []byte("abc"))
	shortIP := v4()
	shortIP.proto = protoUDP
	trailing := shortIP.packet(append(short, 0xee, 0xee))
	short6 := udpSegment(src6[:], dst6[:], 1000, testPort, []byte("abc"))
	trailing6 := v6().packet(protoUDP, append(short6, 0xee, 0xee))

	udpLen := func(n uint16) func(u []byte) { return func(u []byte) { binary.BigEndian.PutUint16(u[4:], n) } }
	v4hdrOnly := v4()
	v4hdrOnly.proto = protoUDP

	return []classifyCase{
		{name: "v4 zero checksum", frame: udp4(zero), want: 4, verdict: deliver, hdr: &zeroHdr4, payload: payload},
		{name: "v6 zero checksum", frame: udp6(zero), want: 6, verdict: dropZeroChecksum6},
		{name: "v6 zero checksum, vouched", frame: udp6(zero), want: 6, flags: flagChecksumVouched, verdict: dropZeroChecksum6},
		{name: "v4 bad checksum", frame: udp4(wrong), want: 4, verdict: dropBadUDPChecksum},
		{name: "v6 bad checksum", frame: udp6(wrong), want: 6, verdict: dropBadUDPChecksum},
		{name: "v4 bad payload", frame: edited(p4, func(b []byte) { b[len(b)-1]++ }), want: 4, verdict: dropBadUDPChecksum},
		{name: "v6 bad payload", frame: edited(p6, func(b []byte) { b[len(b)-1]++ }), want: 6, verdict: dropBadUDPChecksum},
		// The pseudo-header covers the addresses.
		{name: "v4 other source", want: 4, verdict: dropBadUDPChecksum,
			frame: edited(p4, func(b []byte) { b[15]++; reseal4(b) })},
		{name: "v6 other destination", frame: edited(p6, func(b []byte) { b[39]++ }), want: 6, verdict: dropBadUDPChecksum},
		{name: "v4 bad checksum, other port", frame: udp4(wrong), want: 4, port: 1, verdict: dropBadUDPChecksum},
		{name: "v4 bad checksum, vouched", frame: udp4(wrong), want: 4, flags: flagChecksumVouched,
			verdict: deliver, hdr: &wrongHdr4, payload: payload},
		{name: "v6 bad checksum, vouched", frame: udp6(wrong), want: 6, flags: flagChecksumVouched,
			verdict: deliver, hdr: &wrongHdr6, payload: payload},

		{name: "v4 UDP length too big", frame: udp4(udpLen(17)), want: 4, verdict: dropMalformedUDPLength},
		{name: "v6 UDP length too big", frame: udp6(udpLen(17)), want: 6, verdict: dropMalformedUDPLength},
		{name: "v4 UDP length 7", frame: udp4(udpLen(7)), want: 4, verdict: dropMalformedUDPLength},
		{name: "v6 UDP length 7", frame: udp6(udpLen(7)), want: 6, verdict: dropMalformedUDPLength},
		{name: "v4 UDP length 0", frame: udp4(udpLen(0)), want: 4, verdict: dropMalformedUDPLength},
		// Length 0 is the rest of the payload (udpv6_rcv), so the
		// checksum made for the written length no longer holds.
		{name: "v6 UDP length 0", frame: udp6(udpLen(0)), want: 6, verdict: dropBadUDPChecksum},
		{name: "v4 UDP length too big, padding behind", frame: padded(udp4(udpLen(17)), 8, 0), want: 4, verdict: dropMalformedUDPLength},
		{name: "v4 UDP length below the IP payload", frame: trailing, want: 4, verdict: deliver, payload: []byte("abc"),
			hdr: &Header{Version: 4, Src: ap4(src4, 1000), Dst: ap4(dst4, testPort), TTL: 64, ID: 0x1234, Fragments: 1,
				UDPLength: 11, UDPChecksum: binary.BigEndian.Uint16(short[6:])}},
		{name: "v6 UDP length below the IP payload", frame: trailing6, want: 6, verdict: deliver, payload: []byte("abc")},
		{name: "v4 empty payload", frame: v4().udp(1000, testPort, nil), want: 4, verdict: deliver, payload: []byte{}},
		{name: "v6 empty payload", frame: v6().udp(1000, testPort, nil), want: 6, verdict: deliver, payload: []byte{}},
		{name: "v4 IP payload shorter than a UDP header", frame: v4hdrOnly.packet([]byte{0x03, 0xe8, 0x23, 0x29}),
			want: 4, verdict: dropMalformedUDPHeader},
		{name: "v4 no IP payload", frame: v4hdrOnly.packet(nil), want: 4, verdict: dropMalformedUDPHeader},
		{name: "v6 IP payload shorter than a UDP header", frame: v6().packet(protoUDP, []byte{0x03, 0xe8, 0x23, 0x29, 0, 8, 0}),
			want: 6, verdict: dropMalformedUDPHeader},
	}
}

func TestClassifyUDP(t *testing.T) { runClassifyCases(t, udpCases()) }
