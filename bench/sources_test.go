//go:build linux

package main

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"unsafe"
)

// TestManySourcesMessages checks what the many-sources sender builds: each
// datagram, reassembled from its messages where it was fragmented, is UDP
// to the port from the source of its turn, with the payload and a checksum
// that sums to zero with the pseudo header, and the share fragmented is
// the one asked for.
func TestManySourcesMessages(t *testing.T) {
	for _, dst := range []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:40000"), netip.MustParseAddrPort("[::1]:40000")} {
		family := 4
		if dst.Addr().Is6() {
			family = 6
		}
		for _, size := range []int{64, 1400} {
			const sources, fragPct, count = 3, 10, 200
			s, err := newManyMessages(dst, size, sources, fragPct)
			if err != nil {
				t.Fatal(err)
			}
			var last [sendBatch]int
			var msgs [][]byte
			for sent := 0; sent < count; {
				n, datagrams := s.fillBatch(sent, count, &last)
				for i := range n {
					var m []byte
					for _, iov := range s.iovs[i] {
						if iov.Base != nil {
							m = append(m, unsafe.Slice(iov.Base, iov.Len)...)
						}
					}
					msgs = append(msgs, m)
				}
				sent = datagrams
			}
			fragmented := 0
			for k := 0; k < count; k++ {
				if len(msgs) == 0 {
					t.Fatalf("%v, %d B: messages for %d datagrams of %d", dst, size, k, count)
				}
				pkt, frags := reassembleTest(t, msgs)
				msgs = msgs[frags:]
				if frags > 1 {
					fragmented++
				}
				src, gotDst, _, payload, ok := parseUDP(pkt, dst.Port())
				if !ok || gotDst != dst.Addr() || src.Addr() != manySourceAddr(family, k%sources) {
					t.Fatalf("%v, %d B, datagram %d: from %v to %v, ok %v", dst, size, k, src, gotDst, ok)
				}
				if !bytes.Equal(payload, bytes.Repeat([]byte{payloadByte}, size)) {
					t.Fatalf("%v, %d B, datagram %d: payload differs", dst, size, k)
				}
				if c := udpChecksumTest(src.Addr(), dst.Addr(), pkt[len(pkt)-8-size:]); c != 0xffff {
					t.Errorf("%v, %d B, datagram %d: checksum sums to %#x", dst, size, k, c)
				}
			}
			if len(msgs) != 0 {
				t.Errorf("%v, %d B: %d messages left over", dst, size, len(msgs))
			}
			if fragmented != count*fragPct/100 {
				t.Errorf("%v, %d B: %d of %d datagrams fragmented, want %d %%", dst, size, fragmented, count, fragPct)
			}
		}
	}
}

// reassembleTest returns the first datagram of msgs as one unfragmented
// IP packet, and how many messages it took.
func reassembleTest(t *testing.T, msgs [][]byte) ([]byte, int) {
	t.Helper()
	first := msgs[0]
	if first[0]>>4 == 4 {
		if binary.BigEndian.Uint16(first[6:])&0x3fff == 0 {
			return first, 1
		}
		second := msgs[1]
		if binary.BigEndian.Uint16(first[4:]) != binary.BigEndian.Uint16(second[4:]) ||
			binary.BigEndian.Uint16(second[6:])&0x2000 != 0 || int(binary.BigEndian.Uint16(second[6:])&0x1fff)*8 != len(first)-20 {
			t.Fatalf("IPv4 fragments do not fit: % x / % x", first[:20], second[:20])
		}
		pkt := append(append([]byte(nil), first...), second[20:]...)
		binary.BigEndian.PutUint16(pkt[6:], 0)
		return pkt, 2
	}
	if first[6] != 44 {
		return first, 1
	}
	second := msgs[1]
	if !bytes.Equal(first[44:48], second[44:48]) || second[6] != 44 || binary.BigEndian.Uint16(second[42:])&1 != 0 ||
		int(binary.BigEndian.Uint16(second[42:])&^7) != len(first)-48 {
		t.Fatalf("IPv6 fragments do not fit: % x / % x", first[:48], second[:48])
	}
	pkt := append(append([]byte(nil), first[:40]...), first[48:]...)
	pkt = append(pkt, second[48:]...)
	pkt[6] = 17
	binary.BigEndian.PutUint16(pkt[4:], uint16(len(pkt)-40))
	return pkt, 2
}

// udpChecksumTest sums a UDP datagram with its pseudo header, one byte
// pair at a time, without folding tricks: 0xffff when the checksum is
// right.
func udpChecksumTest(src, dst netip.Addr, udp []byte) uint16 {
	var b []byte
	b = append(b, src.AsSlice()...)
	b = append(b, dst.AsSlice()...)
	b = append(b, 0, 17, byte(len(udp)>>8), byte(len(udp)))
	b = append(b, udp...)
	if len(b)%2 == 1 {
		b = append(b, 0)
	}
	var sum uint64
	for i := 0; i < len(b); i += 2 {
		sum += uint64(b[i])<<8 | uint64(b[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

// TestQuickManySources runs a smoke of the many-sources runs: the kernel
// delivers the raw socket's datagrams from every source, fragmented or
// not, and udpstream receives them all and is judged against its
// one-source twin.
func TestQuickManySources(t *testing.T) {
	rep, _ := benchReport(t, "the bench", []int{exitNoNamespace}, "-quick", "-sizes", "64", "-flood", "off", "-pingpong", "0",
		"-sources", "1,50", "-fragmented", "0,10", "-receivers", "net.UDPConn,udpstream")
	if len(rep.Runs) != 2*2*2 {
		t.Fatalf("%d runs, want 8", len(rep.Runs))
	}
	for _, r := range rep.Runs {
		s := r.summaryOf(recvUDPStream)
		if r.Sources == 0 || s == nil || s.Lost != 0 || s.Delivered != quickCount || len(s.Errors) > 0 {
			t.Errorf("run %s: %+v", r.Name, s)
		}
	}
	n := 0
	for _, tl := range rep.Targets {
		if tl.Target == targetManySources {
			n++
		}
	}
	if n != 4 {
		t.Errorf("%d many-sources target lines, want one per run of 50 sources: 4", n)
	}
}
