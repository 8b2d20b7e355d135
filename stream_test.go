package udpstream

import (
	"context"
	"net/netip"
	"testing"
)

// testHandler is a handler over a fixed address set, for measuring and
// testing the per-datagram path without a kernel.
func testHandler[T any](dec Decoder[T], out chan Packet[T]) *handler[T] {
	la := &localAddrs{}
	la.cur.Store(&addrSet{exact: map[netip.Addr]struct{}{
		netip.AddrFrom4(dst4):  {},
		netip.AddrFrom16(dst6): {},
	}, loopbacks: []int{1}})
	cfg := defaultConfig()
	return &handler[T]{
		out:   out,
		dec:   dec,
		port:  testPort,
		cfg:   &cfg,
		local: la,
		reasm: newReassembler(reassemblyConfig{}),
	}
}

// BenchmarkHandle measures the library's own work per datagram, from a
// frame in the ring to a Packet in the consumer's hands.
func BenchmarkHandle(b *testing.B) {
	for _, size := range []int{64, 1400} {
		for _, fam := range []uint8{4, 6} {
			frame := v4().udp(4000, testPort, payloadOf(size))
			if fam == 6 {
				frame = v6().udp(4000, testPort, payloadOf(size))
			}
			name := map[uint8]string{4: "v4", 6: "v6"}[fam]
			b.Run(name+"/"+map[int]string{64: "64", 1400: "1400"}[size], func(b *testing.B) {
				benchDecoder(b, HeaderOnly, frame, func(struct{}) byte { return 0 })
			})
		}
	}
}

// TestHandleAllocs checks that the library's path allocates nothing per
// datagram when the decoder copies nothing.
func TestHandleAllocs(t *testing.T) {
	out := make(chan Packet[struct{}], 1)
	h := testHandler(HeaderOnly, out)
	for _, fam := range []uint8{4, 6} {
		h.fam = fam
		frame := v4().udp(4000, testPort, payloadOf(1400))
		if fam == 6 {
			frame = v6().udp(4000, testPort, payloadOf(1400))
		}
		m := frameMeta{ifIndex: 1}
		allocs := testing.AllocsPerRun(500, func() {
			if err := h.handle(context.Background(), frame, &m); err != nil {
				t.Fatal(err)
			}
			if err := h.flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			if p := <-out; p.Err != nil {
				t.Fatal(p.Err)
			}
		})
		if allocs != 0 {
			t.Errorf("ipv%d: %.1f allocations per datagram, want 0", fam, allocs)
		}
	}
	if h.counts.delivered.Load() == 0 {
		t.Fatal("nothing delivered")
	}
}

// TestGSODropCountsEach checks that a UDP GSO super-packet dropped whole
// for its headers counts as the datagrams it held, as one too long for the
// buffer does.
func TestGSODropCountsEach(t *testing.T) {
	out := make(chan Packet[struct{}], 8)
	h := testHandler(HeaderOnly, out)
	h.fam = 4
	frame := v4().udp(4000, testPort, payloadOf(300))
	frame[len(frame)-1] ^= 0xff // a bad checksum: dropped whole
	m := frameMeta{ifIndex: 1, gso: 100, ipLen: len(frame)}
	if err := h.handle(context.Background(), frame, &m); err != nil {
		t.Fatal(err)
	}
	var st Stats
	h.counts.addTo(&st)
	if st.BadUDPChecksum != 3 || st.Dropped() != 3 || len(out) != 0 {
		t.Fatalf("a super-packet of three datagrams with a bad checksum: %+v", st)
	}
}

// TestZoneCache checks that link-local traffic alternating between
// interfaces asks the system for their names once, not per datagram.
func TestZoneCache(t *testing.T) {
	h := testHandler(HeaderOnly, nil)
	h.zone(1)
	h.zone(2)
	if allocs := testing.AllocsPerRun(100, func() { h.zone(1); h.zone(2) }); allocs != 0 {
		t.Fatalf("%.0f allocations per two interfaces' zones, want 0 once known", allocs)
	}
}

// TestZoned checks that only addresses of link or interface scope get a
// zone, whatever the shortcut for global ones takes as read.
func TestZoned(t *testing.T) {
	h := testHandler(HeaderOnly, nil)
	for _, s := range []string{
		"2001:db8::1", "::1", "::", "fd00::1", "fdff:ffff::1", "fe80::1", "febf::1", "fec0::1",
		"ff01::1", "ff02::1", "ff05::1", "ff0e::1", "::ffff:169.254.1.1", "::ffff:192.0.2.1", "64:ff9b::1",
	} {
		a := netip.MustParseAddr(s)
		want := a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast()
		if got := h.zoned(a, 1).Zone() != ""; got != want {
			t.Errorf("%s: zoned %v, want %v", s, got, want)
		}
	}
}
