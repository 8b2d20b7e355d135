package udpstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// checkSameHeader compares a kernel-verdict header with the ring's header
// of the same datagram: every field is the ring's.
func checkSameHeader(t *testing.T, what string, got, ring Header) {
	t.Helper()
	if got.Unknown != 0 || ring.Unknown != 0 {
		t.Errorf("%s: unknown fields %b, ring's %b", what, got.Unknown, ring.Unknown)
	}
	if fmt.Sprint(got) != fmt.Sprint(ring) {
		t.Errorf("%s:\nkernel %+v\nring   %+v", what, got, ring)
	}
}

// checkAllPaired checks that a kernel-verdict stream delivered n
// datagrams, each paired with its twin, and dropped none. (An injecting
// link's multicast listener reports, behind a Hop-by-Hop header, may count
// as not UDP.)
func checkAllPaired[T any](t *testing.T, s *Stream[T], n uint64) {
	t.Helper()
	st := settled(t, s)
	if st.Delivered != n || st.Dropped()-st.NotUDP != 0 || st.SocketOnly != 0 {
		t.Errorf("stats %+v", st)
	}
	v := s.sys.verdict
	v.mu.Lock()
	p := v.pairs
	v.mu.Unlock()
	if p != n {
		t.Errorf("%d pairs, want %d", p, n)
	}
}

// TestKernelMode receives in kernel-verdict mode while a ring-mode monitor
// watches the same port: both families, a link-local destination and a
// broadcast arrive with every header field the ring sees, each paired with
// its twin on the kernel's receive time.
func TestKernelMode(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	addr6(t, "fe80::1/64", "lo")
	in := injectLink(t, "192.0.2.10/24", "2001:db8::10/64")
	s := openT(t, 0, Payload, WithMode(ModeKernel))
	if s.Mode() != ModeKernel {
		t.Fatalf("mode %v", s.Mode())
	}
	ring := openT(t, s.Port(), Payload, WithMonitor())
	c4, c6 := socketSenders(t)
	sendTo(t, c4, "127.0.0.1", s.Port(), []byte("four"))
	sendTo(t, c6, "::1", s.Port(), []byte("six, a little longer"))
	ll := udpSender(t, "udp6", 5, 0)
	dst := netip.AddrPortFrom(netip.MustParseAddr("fe80::1").WithZone("lo"), s.Port())
	if _, err := ll.WriteToUDPAddrPort([]byte("link-local"), dst); err != nil {
		t.Fatal(err)
	}
	h4 := v4()
	h4.src = netip.MustParseAddr("192.0.2.7").As4()
	h4.dst = netip.MustParseAddr("192.0.2.255").As4()
	in.send(t, h4.udp(4000, s.Port(), []byte("broadcast")))

	got, rh := byPayload(t, s.Packets(), 4), byPayload(t, ring.Packets(), 4)
	for k, h := range got {
		checkSameHeader(t, k, h, rh[k])
	}
	expectNone(t, s.Packets(), 100*time.Millisecond)
	checkAllPaired(t, s, 4)
}

// TestKernelModeInterface binds a kernel-verdict stream to one interface,
// where the kernel hands a datagram to the stream's UDP socket before its
// packet socket (a packet socket bound to a device comes after the IP
// layer in the kernel's list): datagrams still pair, and those that
// arrive elsewhere are neither delivered nor counted.
func TestKernelModeInterface(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	in := injectLink(t, "192.0.2.10/24", "2001:db8::10/64")
	s := openT(t, 0, Payload, WithMode(ModeKernel), WithInterface("in0"))
	h4 := v4()
	h4.src, h4.dst = netip.MustParseAddr("192.0.2.7").As4(), netip.MustParseAddr("192.0.2.10").As4()
	h6 := v6()
	h6.src, h6.dst = netip.MustParseAddr("2001:db8::7").As16(), netip.MustParseAddr("2001:db8::10").As16()
	const n = 200
	for i := range n {
		payload := []byte(fmt.Sprint(i))
		if i%2 == 0 {
			in.send(t, h4.udp(4000, s.Port(), payload))
		} else {
			in.send(t, h6.udp(4000, s.Port(), payload))
		}
	}
	sendTo(t, udpSender(t, "udp4", 64, 0), "127.0.0.1", s.Port(), []byte("on lo"))
	in0 := iface(t, "in0").Index
	seen := map[string]bool{}
	for range n {
		p := recvOne(t, s.Packets(), 2*time.Second)
		if p.Err != nil || seen[string(p.Value)] || p.Header.IfIndex != in0 {
			t.Fatalf("%q: %v, seen before %v, ifindex %d", p.Value, p.Err, seen[string(p.Value)], p.Header.IfIndex)
		}
		seen[string(p.Value)] = true
	}
	expectNone(t, s.Packets(), 200*time.Millisecond)
	if st := settled(t, s); st.Delivered != n || st.Dropped()-st.NotUDP != 0 || st.SocketOnly != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestKernelModeFragments lowers loopback's MTU so that large datagrams
// travel in fragments: the reassembled datagram pairs with the kernel's on
// the receive time of its last fragment.
func TestKernelModeFragments(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	s, got, rh, big4, big6 := fragmentsBesideRing(t, ModeKernel)
	for k, h := range got {
		checkSameHeader(t, fmt.Sprintf("ipv%d, %d bytes", h.Version, len(k)), h, rh[k])
	}
	for _, big := range [][]byte{big4, big6} {
		if h := got[string(big)]; h.Fragments < 3 {
			t.Errorf("ipv%d: fragments %d", h.Version, h.Fragments)
		}
	}
	checkAllPaired(t, s, 3)
}

// TestKernelModeSysctl follows a rule of the kernel's that the ring's own
// verdict does not model: strict reverse-path filtering (rp_filter 1)
// drops a datagram from a source the host has no route back to. Ring mode
// delivers it; kernel-verdict mode does not, and counts it rejected. With
// rp_filter off both deliver it.
func TestKernelModeSysctl(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	in := injectLink(t, "192.0.2.10/24")
	k := openT(t, 0, Payload, WithMode(ModeKernel))
	ring := openT(t, k.Port(), Payload, WithMonitor())
	h4 := v4()
	h4.src = netip.MustParseAddr("198.51.100.7").As4() // no route back
	h4.dst = netip.MustParseAddr("192.0.2.10").As4()
	for _, rp := range []string{"0", "1"} {
		for _, f := range []string{"all", in.ifi.Name} {
			if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+f+"/rp_filter", []byte(rp), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		payload := []byte("rp_filter " + rp)
		in.send(t, h4.udp(4000, k.Port(), payload))
		if p := recvOne(t, ring.Packets(), 2*time.Second); string(p.Value) != string(payload) {
			t.Fatalf("ring mode: %q %v", p.Value, p.Err)
		}
		if rp == "0" {
			if p := recvOne(t, k.Packets(), 2*time.Second); string(p.Value) != string(payload) {
				t.Fatalf("kernel mode: %q %v", p.Value, p.Err)
			}
			continue
		}
		expectNone(t, k.Packets(), 200*time.Millisecond)
	}
	if st := settled(t, k); st.Delivered != 1 || st.Rejected != 1 || st.Dropped()-st.NotUDP != 1 || st.SocketOnly != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestKernelModeStall stalls the consumer while datagrams pile up in the
// ring, the held set and the socket: none is taken for refused, and every
// one is accounted for. Both families at once, then one family's burst
// behind which the other's receive goroutine reads the first family's
// twins, and a stall longer than a second.
func TestKernelModeStall(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	c4, c6 := udpSender(t, "udp4", 64, 0), udpSender(t, "udp6", 64, 0)
	for _, tc := range []struct {
		name  string
		six   func(i int) bool
		stall time.Duration
	}{
		{"interleaved", func(i int) bool { return i%2 == 1 }, 300 * time.Millisecond},
		{"one family, then the other", func(i int) bool { return i == 2999 }, 1500 * time.Millisecond},
	} {
		s := openT(t, 0, Payload, WithMode(ModeKernel), WithChannelCapacity(0))
		const sent = 3000
		for i := range sent {
			c, addr := c4, "127.0.0.1"
			if tc.six(i) {
				c, addr = c6, "::1"
			}
			sendTo(t, c, addr, s.Port(), []byte(fmt.Sprint(i)))
		}
		time.Sleep(tc.stall)
		seen := map[string]bool{}
		for len(seen) < sent {
			p := recvOne(t, s.Packets(), 2*time.Second)
			if p.Err != nil || seen[string(p.Value)] {
				t.Fatalf("%s: %q: %v, seen before %v", tc.name, p.Value, p.Err, seen[string(p.Value)])
			}
			seen[string(p.Value)] = true
		}
		st := settled(t, s)
		if st.Delivered != sent || st.Dropped() != 0 || st.SocketOnly != 0 {
			t.Errorf("%s: stats %+v", tc.name, st)
		}
		s.Close()
	}
}

// TestKernelModeBurstOverRing stalls the consumer while one family's
// burst overflows its ring but not the socket, and a datagram of the other
// family comes behind it: the other receive goroutine reads the whole
// burst's twins looking for its own, more than the pairing keeps. The
// datagrams the ring holds still pair; none is taken for refused.
func TestKernelModeBurstOverRing(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	s := openT(t, 0, Payload, WithMode(ModeKernel), WithBufferSize(1<<20), WithChannelCapacity(0))
	frames := s.sys.sources[0].(*packetSocket).frames
	c4, c6 := udpSender(t, "udp4", 64, 0), udpSender(t, "udp6", 64, 0)
	const sent = 2400
	for i := range sent {
		sendTo(t, c4, "127.0.0.1", s.Port(), []byte(fmt.Sprint(i)))
	}
	sendTo(t, c6, "::1", s.Port(), []byte("six"))
	time.Sleep(300 * time.Millisecond)
	n := 0
	for {
		select {
		case p := <-s.Packets():
			if p.Err != nil {
				t.Fatalf("%q: %v", p.Value, p.Err)
			}
			n++
			continue
		case <-time.After(500 * time.Millisecond):
		}
		break
	}
	st := settled(t, s)
	if st.Rejected != 0 || n < frames || st.Delivered != uint64(n) || st.Delivered+st.Dropped() != sent+1 {
		t.Errorf("%d delivered, the ring holds %d: stats %+v", n, frames, st)
	}
}

// TestKernelModeIdleFanoutMember sends one flow to a fanout group of two,
// so that one member's ring stays empty and its goroutine asleep, in
// bursts that overflow the other's ring but not the socket: the twins of
// the datagrams the ring lost are counted socket-only, not kept until the
// pairing has no room for more, and the datagrams that follow are
// delivered.
func TestKernelModeIdleFanoutMember(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	s := openT(t, 0, Payload, WithMode(ModeKernel), WithFanout(2), WithBufferSize(1<<20), WithChannelCapacity(0))
	c4 := udpSender(t, "udp4", 64, 0)
	for range 3 {
		for i := range 2400 {
			sendTo(t, c4, "127.0.0.1", s.Port(), []byte(fmt.Sprint(i)))
		}
		time.Sleep(100 * time.Millisecond)
		drainQuiet(s)
	}
	v := s.sys.verdict
	for i := 0; ; i++ {
		sendTo(t, c4, "127.0.0.1", s.Port(), []byte("after"))
		if p := recvOne(t, s.Packets(), 2*time.Second); string(p.Value) != "after" {
			t.Fatalf("%q: %v", p.Value, p.Err)
		}
		v.mu.Lock()
		n := v.twins.len()
		v.mu.Unlock()
		if n == 0 {
			break
		}
		if i == 100 {
			t.Fatalf("%d twins still wait for their ring datagram: %+v", n, s.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := settled(t, s); st.Rejected != 0 || st.SocketOnly == 0 {
		t.Errorf("stats %+v", st)
	}
}

// drainQuiet reads what s delivers until it has delivered nothing for
// 300 ms.
func drainQuiet[T any](s *Stream[T]) {
	for {
		select {
		case <-s.Packets():
			continue
		case <-time.After(300 * time.Millisecond):
		}
		return
	}
}

// overflowBurst opens a kernel-verdict stream with a 1 MiB ring per
// family and an unbuffered channel, sends it 8,000 datagrams over IPv4
// before reading any, so that its ring and socket overflow, and then reads
// what it delivers. It returns the stream and the sender.
func overflowBurst(t *testing.T) (*Stream[[]byte], *net.UDPConn) {
	t.Helper()
	s := openT(t, 0, Payload, WithMode(ModeKernel), WithBufferSize(1<<20), WithChannelCapacity(0))
	c4 := udpSender(t, "udp4", 64, 0)
	for i := range 8000 {
		sendTo(t, c4, "127.0.0.1", s.Port(), []byte(fmt.Sprint(i)))
	}
	time.Sleep(100 * time.Millisecond)
	drainQuiet(s)
	return s, c4
}

// TestKernelModeAfterBurst overflows the ring with a burst the consumer
// does not read: the twins of the datagrams the ring lost stay on the
// socket, where no ring datagram waits for them. The datagrams that follow
// once the burst is read must still reach the socket, and be delivered.
func TestKernelModeAfterBurst(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	s, c4 := overflowBurst(t)
	before := settled(t, s)
	for i := range 3 {
		time.Sleep(50 * time.Millisecond)
		sendTo(t, c4, "127.0.0.1", s.Port(), []byte("after"))
		if p := recvOne(t, s.Packets(), 2*time.Second); string(p.Value) != "after" {
			t.Fatalf("%d: %q: %v", i, p.Value, p.Err)
		}
	}
	if st := settled(t, s); st.KernelDrops != before.KernelDrops || st.Rejected != 0 {
		t.Errorf("stats %+v, before %+v", st, before)
	}
}

// TestKernelModeRejectedAfterOverflow overflows the ring and the socket
// with a burst the consumer does not read, then sends a datagram the
// kernel refuses (strict reverse-path filtering): the socket's drops
// during the burst are no reason for a refusal long after it, which counts
// as rejected, not as a kernel drop.
func TestKernelModeRejectedAfterOverflow(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	in := injectLink(t, "192.0.2.10/24")
	for _, f := range []string{"all", in.ifi.Name} {
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+f+"/rp_filter", []byte("1"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := overflowBurst(t)
	before := settled(t, s)
	if before.KernelDrops == 0 || before.Rejected != 0 {
		t.Fatalf("after the burst: %+v", before)
	}
	// A ring-mode monitor of the link counts the refused datagrams that
	// reached the host (a frame injected on a busy machine may be lost).
	mon := openT(t, s.Port(), Payload, WithMonitor(), WithNetwork("udp4"), WithInterface("in0"))
	h4 := v4()
	h4.dst = netip.MustParseAddr("192.0.2.10").As4()
	passed := 0
	for i := 0; passed == 0 || settled(t, mon).Delivered+settled(t, mon).Dropped()-settled(t, mon).NotUDP == uint64(passed); i++ {
		if i == 20 {
			t.Fatalf("the link lost every datagram: %d passed, monitor %+v", passed, settled(t, mon))
		}
		h4.src = netip.MustParseAddr("198.51.100.7").As4() // no route back
		in.send(t, h4.udp(4000, s.Port(), []byte("refused")))
		h4.src = netip.MustParseAddr("192.0.2.7").As4()
		in.send(t, h4.udp(4000, s.Port(), []byte("let through")))
		for done := false; !done; {
			select {
			case p := <-mon.Packets():
				if string(p.Value) == "let through" {
					passed++
					done = true
				}
			case <-time.After(500 * time.Millisecond):
				done = true
			}
		}
	}
	ms := settled(t, mon)
	refused := ms.Delivered + ms.Dropped() - ms.NotUDP - uint64(passed)
	for range passed {
		if p := recvOne(t, s.Packets(), 2*time.Second); string(p.Value) != "let through" {
			t.Fatalf("%q: %v", p.Value, p.Err)
		}
	}
	st := settled(t, s)
	if st.Rejected != refused || st.KernelDrops != before.KernelDrops {
		t.Errorf("%d rejected, %d more kernel drops, want %d and 0: %+v", st.Rejected, st.KernelDrops-before.KernelDrops, refused, st)
	}
}

// TestKernelModeReplyCancel replies from the exact destination address,
// spreads flows over a fanout group, and ends the stream by Close and by
// cancel with nothing left behind.
func TestKernelModeReplyCancel(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	ip(t, "addr", "add", "127.0.0.2/8", "dev", "lo")
	s := openT(t, 0, Payload, WithMode(ModeKernel), WithFanout(2), WithChannelCapacity(0))
	c := udpSender(t, "udp4", 64, 0)
	sendTo(t, c, "127.0.0.2", s.Port(), []byte("ping"))
	p := recvOne(t, s.Packets(), 2*time.Second)
	if err := p.ReplyWith([]byte("pong"), SendOptions{TTL: Value(9)}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "pong" || from != netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), s.Port()) {
		t.Fatalf("reply %q from %v: %v", buf[:n], from, err)
	}
	c6 := udpSender(t, "udp6", 64, 0)
	sendTo(t, c6, "::1", s.Port(), []byte("ping6"))
	p6 := recvOne(t, s.Packets(), 2*time.Second)
	if err := p6.Reply([]byte("pong6")); err != nil {
		t.Fatal(err)
	}
	c6.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, from, err := c6.ReadFromUDPAddrPort(buf); err != nil || string(buf[:n]) != "pong6" || from.Port() != s.Port() {
		t.Fatalf("reply %q from %v: %v", buf[:n], from, err)
	}

	// Flows spread over the group, each datagram delivered once.
	const flows = 32
	spreadFlows(t, s, flows)

	// Busy at the end: what the stream held is counted.
	for range 100 {
		sendTo(t, c, "127.0.0.1", s.Port(), []byte("late"))
	}
	recvOne(t, s.Packets(), 2*time.Second)
	s.Close()
	for range s.Packets() {
	}
	st := s.Stats()
	if got := st.Delivered + st.Dropped(); got != flows+2+100 || st.Pending != 0 || st.SocketOnly != 0 {
		t.Errorf("accounting: delivered %d + dropped %d = %d, want %d: %+v", st.Delivered, st.Dropped(), got, flows+2+100, st)
	}
	if err := p.Reply([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("reply after close: %v, want net.ErrClosed", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	s2, err := Open(ctx, 0, Payload, WithMode(ModeKernel), WithNetwork("udp6"))
	if err != nil {
		t.Fatal(err)
	}
	sendTo(t, c6, "::1", s2.Port(), []byte("x"))
	cancel()
	<-s2.Done()
	if s2.Err() != nil {
		t.Errorf("err after cancel: %v", s2.Err())
	}
}

// TestKernelModeOptions refuses the options kernel-verdict mode cannot
// honour.
func TestKernelModeOptions(t *testing.T) {
	if !inNetns(t) {
		return
	}
	for _, o := range []Option{WithMonitor(), WithAnyDestination()} {
		_, err := Open(context.Background(), 9, Payload, WithMode(ModeKernel), o)
		if !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), "kernel-verdict mode") {
			t.Errorf("kernel mode with %v: %v", o, err)
		}
	}
}
