package udpstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// setSockopt sets an option on c's socket, failing the test on error.
func setSockopt(t *testing.T, c *net.UDPConn, set func(fd int) error) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = set(int(fd)) }); err != nil || serr != nil {
		t.Fatalf("setsockopt: %v %v", err, serr)
	}
}

// viewReport is what a decoder found out about the views it was given.
type viewReport struct {
	payload  []byte
	capsOK   bool   // every view's capacity was its length
	appended bool   // appending to the payload left it as it was
	overrun  string // what reslicing the payload past its end did
	frags    int    // the fragments it showed
}

// viewProbe is a decoder that tries what a careless decoder would do to
// its views: append to them and reslice them past their end.
func viewProbe(d *Datagram) (viewReport, error) {
	ip, udp, pl := d.IP(), d.UDP(), d.Payload()
	r := viewReport{
		payload: bytes.Clone(pl),
		capsOK:  cap(ip) == len(ip) && cap(udp) == len(udp) && cap(pl) == len(pl),
	}
	frags := d.Fragments()
	r.frags = len(frags)
	before := make([][]byte, len(frags))
	for i, f := range frags {
		r.capsOK = r.capsOK && cap(f.IP) == len(f.IP)
		before[i] = bytes.Clone(f.IP)
	}
	grown := append(pl, bytes.Repeat([]byte{0xee}, 64)...)
	grown[0] ^= 0xff // written to a copy, never to the ring
	r.appended = bytes.Equal(d.Payload(), r.payload)
	// Appending to one fragment must leave the next one, and the
	// datagram, as they were.
	for _, f := range frags {
		g := append(f.IP, bytes.Repeat([]byte{0xee}, 64)...)
		g[len(f.IP)] ^= 0xff
	}
	if len(frags) > 0 {
		frags = append(frags, Fragment{IP: []byte{0xee}})
		frags[0].IP = nil
	}
	r.appended = r.appended && bytes.Equal(d.Payload(), r.payload) && len(d.Fragments()) == len(before)
	for i, f := range d.Fragments() {
		r.appended = r.appended && bytes.Equal(f.IP, before[i])
	}
	func() {
		defer func() {
			if e := recover(); e != nil {
				r.overrun = fmt.Sprint(e)
			}
		}()
		_ = pl[: len(pl)+1 : len(pl)+1]
		r.overrun = "no panic"
	}()
	return r, nil
}

// TestViewsBounded checks that the views a decoder sees, and the slices
// of a Header, reach no byte beyond their own, on every path a datagram
// can take: a ring slot, the socket's queue, reassembly and GSO
// splitting. A decoder that appends to its view must corrupt nothing, and
// one that reslices past the end must panic (and the stream recover). The
// stream keeps fragments: appending to one fragment's view, or to the
// list of them, must not touch the next fragment's bytes.
func TestViewsBounded(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	// A smaller loopback MTU makes the kernel fragment large datagrams.
	ip(t, "link", "set", "lo", "mtu", "1280")
	s := openT(t, 0, viewProbe, WithFragments())

	c4 := udpSender(t, "udp4", 64, 0)
	c6 := udpSender(t, "udp6", 64, 0)
	// IPv4 options (NOP NOP NOP EOL) and an IPv6 Destination Options
	// header (PadN), so that Header.Options and ExtHeaders are set.
	setSockopt(t, c4, func(fd int) error {
		return unix.SetsockoptString(fd, unix.IPPROTO_IP, unix.IP_OPTIONS, "\x01\x01\x01\x00")
	})
	setSockopt(t, c6, func(fd int) error {
		return unix.SetsockoptString(fd, unix.IPPROTO_IPV6, unix.IPV6_DSTOPTS, "\x00\x00\x01\x04\x00\x00\x00\x00")
	})
	gso := udpSender(t, "udp4", 64, 0)
	setSockopt(t, gso, func(fd int) error { return unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_SEGMENT, 100) })

	type send struct {
		c    *net.UDPConn
		addr string
		n    int
		path string
	}
	sends := []send{
		{c4, "127.0.0.1", 40, "ring"},
		{c6, "::1", 40, "ring"},
		{c4, "127.0.0.1", 1200, "ring"},
		{c6, "::1", 4000, "reassembly"},
		{c4, "127.0.0.1", 6000, "reassembly"},
	}
	for _, sd := range sends {
		sendTo(t, sd.c, sd.addr, s.Port(), bigPayload(sd.n, byte(sd.n)))
	}
	// One super-packet of thirty 100-byte datagrams: too big for a ring
	// slot (and never fragmented), it is read from the socket's queue.
	sendTo(t, gso, "127.0.0.1", s.Port(), bigPayload(3000, 3))
	want := len(sends) + 30
	for i := range want {
		p := recvOne(t, s.Packets(), 2*time.Second)
		if p.Err != nil {
			t.Fatalf("datagram %d: %v", i, p.Err)
		}
		r, h := p.Value, p.Header
		if !r.capsOK || !r.appended || !strings.Contains(r.overrun, "out of range") {
			t.Errorf("%d-byte datagram (%d fragments): capacities bounded %v, append harmless %v, reslice past the end: %s",
				len(r.payload), h.Fragments, r.capsOK, r.appended, r.overrun)
		}
		if wantFrags := h.Fragments; r.frags != wantFrags && (wantFrags > 1 || r.frags != 0) {
			t.Errorf("%d-byte datagram of %d fragments showed %d", len(r.payload), h.Fragments, r.frags)
		}
		if cap(h.Options) != len(h.Options) || cap(h.ExtHeaders) != len(h.ExtHeaders) {
			t.Errorf("header slices: options %d/%d, extension headers %d/%d (len/cap)",
				len(h.Options), cap(h.Options), len(h.ExtHeaders), cap(h.ExtHeaders))
		}
		if h.Src.Port() != uint16(gso.LocalAddr().(*net.UDPAddr).Port) {
			if h.Version == 4 && len(h.Options) != 4 || h.Version == 6 && len(h.ExtHeaders) == 0 {
				t.Errorf("ipv%d datagram of %d bytes without its options: %+v", h.Version, len(r.payload), h)
			}
		}
	}
	if st := settled(t, s); st.Delivered != uint64(want) || st.Dropped() != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestDecoderCopiesBoundedStream is TestViewsBounded for what the
// copying decoders return, on the paths of the kernel: ring slots over
// both families, reassembly, GSO splitting and, in socket mode, the
// socket's queue. Every copy's capacity is its length, and appending to
// one and writing past its end leaves every other copy as it came.
func TestDecoderCopiesBoundedStream(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	ip(t, "link", "set", "lo", "mtu", "1280")
	for _, dc := range copyingDecoders {
		for _, mode := range []Mode{ModeRing, ModeSocket} {
			if dc.ip && mode == ModeSocket {
				continue // no header bytes to copy
			}
			s := openT(t, 0, dc.dec, WithMode(mode))
			c4 := udpSender(t, "udp4", 64, 0)
			c6 := udpSender(t, "udp6", 64, 0)
			gso := udpSender(t, "udp4", 64, 0)
			setSockopt(t, gso, func(fd int) error { return unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_SEGMENT, 100) })
			want := 0
			for i, n := range []int{1, 40, 64, 300, 511, 512, 513, 1200, 4000} {
				sendTo(t, c4, "127.0.0.1", s.Port(), bigPayload(n, byte(i)))
				sendTo(t, c6, "::1", s.Port(), bigPayload(n, byte(i+100)))
				want += 2
			}
			sendTo(t, gso, "127.0.0.1", s.Port(), bigPayload(3000, 3)) // thirty datagrams
			want += 30
			var vals, orig [][]byte
			for range want {
				p := recvOne(t, s.Packets(), 2*time.Second)
				if p.Err != nil {
					t.Fatalf("%s, %v mode: %v", dc.name, mode, p.Err)
				}
				if cap(p.Value) != len(p.Value) {
					t.Errorf("%s, %v mode: a %d-byte copy has capacity %d", dc.name, mode, len(p.Value), cap(p.Value))
				}
				vals = append(vals, p.Value)
				orig = append(orig, bytes.Clone(p.Value))
			}
			for i := range vals {
				grown := append(vals[i], bytes.Repeat([]byte{0xee}, 600)...)
				grown[len(grown)-1] ^= 0xff
				for j := range vals {
					if !bytes.Equal(vals[j], orig[j]) {
						t.Fatalf("%s, %v mode: appending to the %d-byte copy changed the %d-byte copy", dc.name, mode, len(vals[i]), len(vals[j]))
					}
				}
			}
			s.Close()
		}
	}
}

// TestDecoderPanicError checks that a decoder's panic reaches the channel
// as one line, with its stack available through errors.As.
func TestDecoderPanicError(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	s := openT(t, 0, func(d *Datagram) (int, error) {
		b := d.Payload()
		return int(b[:len(b)+8][len(b)]), nil // out of range: capacity is length
	})
	c := udpSender(t, "udp4", 64, 0)
	sendTo(t, c, "127.0.0.1", s.Port(), []byte("boom"))
	p := recvOne(t, s.Packets(), 2*time.Second)
	var pe *DecoderPanicError
	if !errors.Is(p.Err, ErrDecoderPanic) || !errors.As(p.Err, &pe) {
		t.Fatalf("err %v (%T), want a *DecoderPanicError", p.Err, p.Err)
	}
	if msg := p.Err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "out of range") {
		t.Errorf("Error() %q: want one line naming the panic", msg)
	}
	if !bytes.Contains(pe.Stack, []byte("TestDecoderPanicError")) {
		t.Errorf("stack does not show the decoder:\n%s", pe.Stack)
	}
	if p.Header.Dst.Port() != s.Port() || p.Value != 0 {
		t.Errorf("header %+v value %v", p.Header, p.Value)
	}
}

// TestCountedOnceHandedOver checks that Delivered counts a datagram once
// its send on the channel has happened, and Pending those waiting.
func TestCountedOnceHandedOver(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	s := openT(t, 0, HeaderOnly, WithChannelCapacity(1), WithNetwork("udp4"))
	c := udpSender(t, "udp4", 64, 0)
	for range 3 {
		sendTo(t, c, "127.0.0.1", s.Port(), []byte("x"))
	}
	// The receive goroutine blocks handing over the second while the
	// channel holds the first; the third may still be in the ring.
	st := waitStats(t, s, func(st Stats) bool { return st.Pending > 0 })
	time.Sleep(50 * time.Millisecond)
	if st = s.Stats(); st.Delivered != 1 || st.Pending == 0 || st.Delivered+st.Pending > 3 {
		t.Fatalf("channel holds 1 of 3: %+v", st)
	}
	for range 3 {
		recvOne(t, s.Packets(), time.Second)
	}
	st = waitStats(t, s, func(st Stats) bool { return st.Delivered == 3 })
	if st.Pending != 0 {
		t.Fatalf("all received: %+v", st)
	}
}

// waitStats polls s.Stats until ok, failing the test after two seconds.
func waitStats[T any](t *testing.T, s *Stream[T], ok func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		st := s.Stats()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats never got there: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCloseCounts ends a stream whose consumer reads one datagram of
// many: those waiting in the batch, those still in the ring and one
// still in reassembly are counted as abandoned, so that every datagram
// sent is accounted for.
func TestCloseCounts(t *testing.T) {
	if !inNetns(t) {
		return
	}
	in := injectLink(t, "192.0.2.10/24")
	for _, how := range []string{"Close", "cancel"} {
		t.Run(how, func(t *testing.T) {
			leakCheck(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s, err := Open(ctx, 0, Payload, WithChannelCapacity(1), WithNetwork("udp4"))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			c := udpSender(t, "udp4", 64, 0)
			// More than a batch, so that some stay in the ring.
			const sent = 3*handoffBatch + 50
			for i := range sent {
				sendTo(t, c, "127.0.0.1", s.Port(), []byte(fmt.Sprint(i)))
			}
			// The first fragment of a datagram whose rest never comes.
			h := v4()
			h.src, h.dst = netip.MustParseAddr("192.0.2.99").As4(), netip.MustParseAddr("192.0.2.10").As4()
			whole := h.udp(4000, s.Port(), bigPayload(64, 1))
			first := edited(whole[:20+32], func(b []byte) {
				b[2], b[3] = 0, 20+32
				b[6] |= 0x20 // MF
			})
			reseal4(first)
			in.send(t, first)

			recvOne(t, s.Packets(), 2*time.Second)
			// The receive goroutine is blocked handing over a batch, the
			// rest waits in the ring.
			time.Sleep(100 * time.Millisecond)
			if how == "Close" {
				s.Close()
			} else {
				cancel()
			}
			got := 1
			for range s.Packets() {
				got++
			}
			st := s.Stats()
			if st.Delivered != uint64(got) || st.Pending != 0 {
				t.Errorf("received %d, stats %+v", got, st)
			}
			if st.Delivered+st.DecodeErrors+st.Dropped() != sent+1 || st.Abandoned != sent+1-st.Delivered || st.Abandoned < sent-handoffBatch {
				t.Fatalf("sent %d datagrams and a fragment: delivered %d + dropped %d; %+v", sent, st.Delivered, st.Dropped(), st)
			}
			t.Logf("%s: sent %d datagrams and the first fragment of one more: delivered %d, abandoned %d", how, sent, st.Delivered, st.Abandoned)
		})
	}
}

// TestDropErrors checks that WithDropErrors surfaces malformed datagrams,
// bad checksums and datagrams too long for the buffer with their header,
// and that without it they are only counted.
func TestDropErrors(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	in := injectLink(t, "192.0.2.10/24", "2001:db8::10/64")
	plain := openT(t, 0, Payload, WithNetwork("udp4"))
	s := openT(t, plain.Port(), Payload, WithMonitor(), WithDropErrors(), WithChannelCapacity(1024))

	h := v4()
	h.src, h.dst = netip.MustParseAddr("192.0.2.99").As4(), netip.MustParseAddr("192.0.2.10").As4()
	h.ttl = 33
	good := h.udp(4000, s.Port(), []byte("good"))
	badSum := edited(good, func(b []byte) { b[len(b)-1] ^= 0xff })
	longUDP := edited(good, func(b []byte) { b[25]++ }) // UDP length one past the datagram
	h6 := v6()
	h6.src, h6.dst = netip.MustParseAddr("2001:db8::99").As16(), netip.MustParseAddr("2001:db8::10").As16()
	zero6 := edited(h6.udp(4000, s.Port(), []byte("no sum")), func(b []byte) { b[46], b[47] = 0, 0 })
	for _, f := range [][]byte{badSum, longUDP, zero6, good} {
		in.send(t, f)
	}
	// The families arrive on receive goroutines of their own: in any
	// order.
	wants := map[string]error{"UDP checksum": ErrChecksum, "UDP length disagrees with the IP datagram": ErrMalformed, "zero UDP checksum over IPv6": ErrChecksum, "": nil}
	for i := range len(wants) {
		p := recvOne(t, s.Packets(), 2*time.Second)
		found := false
		for text, err := range wants {
			if p.Err == nil && err == nil || p.Err != nil && errors.Is(p.Err, err) && p.Err.Error() == err.Error()+": "+text {
				delete(wants, text)
				found = true
				break
			}
		}
		if !found {
			t.Fatalf("packet %d: unexpected err %v", i, p.Err)
		}
		if p.Header.Src.Port() != 4000 || p.Header.Dst.Port() != s.Port() || p.Header.Version == 4 && p.Header.TTL != 33 {
			t.Errorf("packet %d: header not filled: %+v", i, p.Header)
		}
		if p.Err != nil && p.Value != nil {
			t.Errorf("packet %d: value %q for a dropped datagram", i, p.Value)
		}
	}
	st := settled(t, s)
	if st.BadUDPChecksum != 1 || st.Malformed != 1 || st.ZeroUDPChecksum != 1 || st.Delivered != 1 {
		t.Fatalf("stats %+v", st)
	}
	recvOne(t, plain.Packets(), time.Second)
	expectNone(t, plain.Packets(), 100*time.Millisecond)
	if st := settled(t, plain); st.BadUDPChecksum != 1 || st.Malformed != 1 || st.Delivered != 1 {
		t.Fatalf("without the option: %+v", st)
	}

	// Datagrams too big for a ring slot wait whole on the socket's
	// queue; while the receive goroutine is held up in the decoder, the
	// queue overflows and what is left in the slot is too short.
	gate := make(chan struct{})
	held := make(chan struct{}, 1)
	big := openT(t, 0, func(d *Datagram) (struct{}, error) {
		select {
		case held <- struct{}{}:
			<-gate
		default:
		}
		return struct{}{}, nil
	}, WithDropErrors(), WithNetwork("udp4"))
	c := udpSender(t, "udp4", 64, 0)
	sendTo(t, c, "127.0.0.1", big.Port(), []byte("hold"))
	<-held
	const n = 40
	for range n {
		sendTo(t, c, "127.0.0.1", big.Port(), make([]byte, 60000))
	}
	time.Sleep(50 * time.Millisecond)
	close(gate)
	var long int
	for {
		select {
		case p := <-big.Packets():
			if errors.Is(p.Err, ErrBufsizeTooShort) {
				long++
				if p.Header.Dst.Port() != big.Port() || p.Header.TTL != 64 {
					t.Errorf("too long: header %+v", p.Header)
				}
			}
			continue
		case <-time.After(200 * time.Millisecond):
		}
		break
	}
	st = settled(t, big)
	if long == 0 || uint64(long) != st.TooLong || st.Delivered+st.Dropped() != n+1 {
		t.Fatalf("%d surfaced as too long; %+v", long, st)
	}
	t.Logf("%d of %d datagrams of 60,000 bytes too long for the buffer", long, n)
}
