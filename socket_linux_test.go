package udpstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpstream/udpstream/internal/netnstest"
)

// setSockopts applies f to c's socket, failing the test on error.
func setSockopts(t *testing.T, c *net.UDPConn, f func(fd int) error) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = f(int(fd)) }); err != nil || serr != nil {
		t.Fatalf("sender options: %v %v", err, serr)
	}
}

// socketSenders returns an IPv4 sender with IP options (three NOPs and an
// end) and an IPv6 one with a Destination Options header and a flow
// label of the kernel's choosing.
func socketSenders(t *testing.T) (c4, c6 *net.UDPConn) {
	t.Helper()
	c4 = udpSender(t, "udp4", 17, 0x2e<<2|1)
	setSockopts(t, c4, func(fd int) error {
		return unix.SetsockoptString(fd, unix.IPPROTO_IP, unix.IP_OPTIONS, "\x01\x01\x01\x00")
	})
	c6 = udpSender(t, "udp6", 33, 0x0a<<2|2)
	setSockopts(t, c6, func(fd int) error {
		// Next Header, length 0 (8 bytes), then PadN over the other 6.
		return unix.SetsockoptString(fd, unix.IPPROTO_IPV6, unix.IPV6_DSTOPTS, "\x00\x00\x01\x04\x00\x00\x00\x00")
	})
	return c4, c6
}

// byPayload receives n packets from ch and keys them by payload.
func byPayload(t *testing.T, ch <-chan Packet[[]byte], n int) map[string]Header {
	t.Helper()
	got := map[string]Header{}
	for len(got) < n {
		var p Packet[[]byte]
		select {
		case p = <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d datagrams arrived: %v", len(got), n, slices.Collect(maps.Keys(got)))
		}
		if p.Err != nil {
			t.Fatalf("packet error: %v", p.Err)
		}
		got[string(p.Value)] = p.Header
	}
	return got
}

// checkAgainstRing compares a socket-mode header with the ring's header
// of the same datagram: every field the socket sees must be the ring's,
// and every other field zero and marked unknown.
func checkAgainstRing(t *testing.T, what string, sock, ring Header) {
	t.Helper()
	if ring.Unknown != 0 {
		t.Errorf("%s: ring header has unknown fields %b", what, ring.Unknown)
	}
	want := FieldUDPChecksum
	if ring.Version == 4 {
		want |= FieldID | FieldDF
	}
	if ring.Fragments > 1 {
		want |= FieldFragments
		if ring.Version == 6 {
			want |= FieldID | FieldExtHeaders
		}
	}
	if sock.Unknown != want {
		t.Errorf("%s: unknown fields %b, want %b", what, sock.Unknown, want)
	}
	if sock.ID != 0 || sock.DF || sock.UDPChecksum != 0 {
		t.Errorf("%s: unknown fields not zero: id %d df %v checksum %#x", what, sock.ID, sock.DF, sock.UDPChecksum)
	}
	if sock.Known(FieldUDPChecksum) || sock.Known(FieldDF|FieldUDPChecksum) || sock.Version == 6 && !sock.Known(FieldDF) {
		t.Errorf("%s: Known disagrees with Unknown %b", what, sock.Unknown)
	}
	if sock.Version != ring.Version || sock.Src != ring.Src || sock.Dst != ring.Dst || sock.TTL != ring.TTL ||
		sock.TOS != ring.TOS || sock.FlowLabel != ring.FlowLabel || sock.IfIndex != ring.IfIndex ||
		sock.UDPLength != ring.UDPLength || sock.MF != ring.MF || !bytes.Equal(sock.Options, ring.Options) {
		t.Errorf("%s:\nsocket %+v\nring   %+v", what, sock, ring)
	}
	ext := slices.DeleteFunc(slices.Clone(ring.ExtHeaders), func(x uint8) bool { return x == nhFragment })
	if !slices.Equal(sock.ExtHeaders, ext) {
		t.Errorf("%s: extension headers %v, ring's %v", what, sock.ExtHeaders, ring.ExtHeaders)
	}
	if ring.Fragments > 1 {
		if sock.Fragments < 2 || sock.Fragments > ring.Fragments {
			t.Errorf("%s: fragments %d, want a lower bound of the ring's %d", what, sock.Fragments, ring.Fragments)
		}
	} else if sock.Fragments != 1 {
		t.Errorf("%s: fragments %d, want 1", what, sock.Fragments)
	}
	if d := sock.Time.Sub(ring.Time).Abs(); d > 10*time.Millisecond {
		t.Errorf("%s: time %v, the ring's %v", what, sock.Time, ring.Time)
	}
}

// TestSocketMode receives in socket mode while a ring-mode monitor
// watches the same port: both families arrive with the headers the ring
// sees, and what a socket cannot see is marked.
func TestSocketMode(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	// Before the ring opens: it reads the host's addresses then.
	addr6(t, "fe80::1/64", "lo")
	s := openT(t, 0, Payload, WithMode(ModeSocket))
	if s.Mode() != ModeSocket {
		t.Fatalf("mode %v", s.Mode())
	}
	ring := openT(t, s.Port(), Payload, WithMonitor())
	if ring.Mode() != ModeRing {
		t.Fatalf("monitor mode %v", ring.Mode())
	}
	c4, c6 := socketSenders(t)
	sendTo(t, c4, "127.0.0.1", s.Port(), []byte("four"))
	sendTo(t, c6, "::1", s.Port(), []byte("six, a little longer"))
	// A link-local destination carries its zone.
	ll := udpSender(t, "udp6", 5, 0)
	dst := netip.AddrPortFrom(netip.MustParseAddr("fe80::1").WithZone("lo"), s.Port())
	if _, err := ll.WriteToUDPAddrPort([]byte("link-local"), dst); err != nil {
		t.Fatal(err)
	}

	sock, rh := byPayload(t, s.Packets(), 3), byPayload(t, ring.Packets(), 3)
	for k, h := range sock {
		checkAgainstRing(t, k, h, rh[k])
	}
	if h := sock["link-local"]; h.Dst.Addr().Zone() != "lo" {
		t.Errorf("link-local destination %v, want zone lo", h.Dst)
	}
	if h := sock["four"]; h.Src.Addr() != netip.MustParseAddr("127.0.0.1") || h.TTL != 17 || len(h.Options) != 4 {
		t.Errorf("ipv4: %+v", h)
	}
	if h := sock["six, a little longer"]; h.FlowLabel == 0 || !slices.Equal(h.ExtHeaders, []uint8{nhDestOptions}) {
		t.Errorf("ipv6: flow %#x ext %v", h.FlowLabel, h.ExtHeaders)
	}
	st := settled(t, s)
	if st.Delivered != 3 || st.Dropped() != 0 {
		t.Errorf("stats %+v", st)
	}
}

// fragmentsBesideRing lowers loopback's MTU, opens a stream in mode with
// a ring-mode monitor of its port beside it, and sends two datagrams that
// travel in fragments, one over each family, and a small one. It returns
// the stream, the headers each received by payload, and the two large
// payloads.
func fragmentsBesideRing(t *testing.T, mode Mode) (s *Stream[[]byte], got, ring map[string]Header, big4, big6 []byte) {
	t.Helper()
	ip(t, "link", "set", "lo", "mtu", "1280")
	s = openT(t, 0, Payload, WithMode(mode))
	monitor := openT(t, s.Port(), Payload, WithMonitor())
	c4, c6 := udpSender(t, "udp4", 64, 0), udpSender(t, "udp6", 64, 0)
	big4, big6 = bigPayload(3000, 4), bigPayload(5000, 6)
	sendTo(t, c4, "127.0.0.1", s.Port(), big4)
	sendTo(t, c6, "::1", s.Port(), big6)
	sendTo(t, c4, "127.0.0.1", s.Port(), []byte("small"))
	return s, byPayload(t, s.Packets(), 3), byPayload(t, monitor.Packets(), 3), big4, big6
}

// TestSocketModeFragments lowers loopback's MTU so that large datagrams
// travel in fragments: socket mode receives them whole, marked as
// fragmented with a lower bound of the count.
func TestSocketModeFragments(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	_, sock, rh, big4, big6 := fragmentsBesideRing(t, ModeSocket)
	for k, h := range sock {
		checkAgainstRing(t, fmt.Sprintf("ipv%d, %d bytes", h.Version, len(k)), h, rh[k])
	}
	for _, big := range [][]byte{big4, big6} {
		if h, ok := sock[string(big)]; !ok || h.Known(FieldFragments) || h.Fragments < 3 {
			t.Errorf("ipv%d fragmented datagram: present %v, fragments %d, unknown %b", h.Version, ok, h.Fragments, h.Unknown)
		}
	}
	if h := sock["small"]; !h.Known(FieldFragments) || h.Fragments != 1 || h.MF {
		t.Errorf("small datagram: fragments %d, unknown %b, MF %v", h.Fragments, h.Unknown, h.MF)
	}
}

// TestSocketModeReplyAndStats replies from the exact destination address,
// counts drops when the consumer stalls, and leaves nothing behind.
func TestSocketModeReplyAndStats(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	ip(t, "addr", "add", "127.0.0.2/8", "dev", "lo")
	s := openT(t, 0, Payload, WithMode(ModeSocket), WithChannelCapacity(0), WithBufferSize(minBufferSize))
	c := udpSender(t, "udp4", 64, 0)
	sendTo(t, c, "127.0.0.2", s.Port(), []byte("ping"))
	p := recvOne(t, s.Packets(), 2*time.Second)
	if err := p.Reply([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "pong" || from != netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), s.Port()) {
		t.Fatalf("reply %q from %v: %v", buf[:n], from, err)
	}

	// The consumer stalls: the socket's buffer fills and the kernel
	// drops the rest. Every datagram is accounted for.
	const sent = 3000
	payload := make([]byte, 1000)
	for range sent {
		sendTo(t, c, "127.0.0.1", s.Port(), payload)
	}
	time.Sleep(100 * time.Millisecond)
	st := s.Stats()
	if st.KernelDrops == 0 {
		t.Errorf("no kernel drops after %d datagrams to a stalled consumer: %+v", sent, st)
	}
	s.Close()
	for range s.Packets() {
	}
	st = s.Stats()
	if got := st.Delivered + st.Dropped(); got != sent+1 || st.Pending != 0 {
		t.Errorf("accounting: delivered %d + dropped %d = %d, want %d sent: %+v", st.Delivered, st.Dropped(), got, sent+1, st)
	}
	if st.Abandoned == 0 {
		t.Errorf("nothing abandoned at the end: %+v", st)
	}
}

// spreadFlows sends one datagram from each of n sockets of their own to
// s's port on 127.0.0.1, and checks that each arrives once.
func spreadFlows[T any](t *testing.T, s *Stream[T], n int) {
	t.Helper()
	for range n {
		sendTo(t, udpSender(t, "udp4", 64, 0), "127.0.0.1", s.Port(), []byte("x"))
	}
	seen := map[netip.AddrPort]bool{}
	for range n {
		p := recvOne(t, s.Packets(), 2*time.Second)
		if seen[p.Header.Src] {
			t.Fatalf("%v delivered twice", p.Header.Src)
		}
		seen[p.Header.Src] = true
	}
	expectNone(t, s.Packets(), 100*time.Millisecond)
}

// TestSocketModeFanout spreads flows over SO_REUSEPORT sockets, each
// datagram delivered once.
func TestSocketModeFanout(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	s := openT(t, 0, HeaderOnly, WithMode(ModeSocket), WithFanout(4))
	const flows = 32
	spreadFlows(t, s, flows)
	if st := settled(t, s); st.Delivered != flows {
		t.Errorf("stats %+v", st)
	}
}

// TestSocketModeCancel ends socket-mode streams by context and by Close,
// waiting and busy, with no goroutine or fd left.
func TestSocketModeCancel(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Open(ctx, 0, Payload, WithMode(ModeSocket), WithNetwork("udp6"))
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	<-s.Done()
	if s.Err() != nil {
		t.Errorf("err after cancel: %v", s.Err())
	}
	s2 := openT(t, 0, Payload, WithMode(ModeSocket), WithNetwork("udp4"), WithChannelCapacity(0))
	c := udpSender(t, "udp4", 64, 0)
	for range 100 {
		sendTo(t, c, "127.0.0.1", s2.Port(), []byte("x"))
	}
	p := recvOne(t, s2.Packets(), 2*time.Second)
	s2.Close()
	if err := s2.Close(); err != nil || s2.Err() != nil {
		t.Errorf("close: %v, err %v", err, s2.Err())
	}
	if err := p.Reply([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("reply after close: %v, want net.ErrClosed", err)
	}
}

// TestSocketModeOptions refuses, in socket mode, the options only a
// packet socket can honour.
func TestSocketModeOptions(t *testing.T) {
	for _, o := range []Option{WithMonitor(), WithPortErrors(), WithDropErrors(), WithAnyDestination(), WithFragments()} {
		_, err := Open(context.Background(), 9, Payload, WithMode(ModeSocket), o)
		if !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), "needs ring mode") {
			t.Errorf("socket mode with a ring option: %v", err)
		}
	}
	for m, name := range map[Mode]string{ModeRing: "ring", ModeSocket: "socket", ModeAuto: "auto", ModeKernel: "kernel"} {
		if m.String() != name {
			t.Errorf("Mode(%d) is %q, want %q", m, m, name)
		}
	}
}

// TestModeAuto picks the ring where the process may open packet sockets
// (its network namespace) and socket mode where it may not (a user
// namespace of its own on the host's network), where socket mode works.
func TestModeAuto(t *testing.T) {
	const env = "UDPSTREAM_AUTO_TEST"
	if os.Getenv(env) == "" {
		if inNetns(t) {
			leakCheck(t)
			if s := openT(t, 0, HeaderOnly, WithMode(ModeAuto)); s.Mode() != ModeRing {
				t.Errorf("with CAP_NET_RAW: mode %v, want ring", s.Mode())
			}
			return
		}
		netnstest.RunChild(t, 0, env+"=1")
		return
	}
	// On the host's network: send nothing, only open and close.
	s, err := Open(context.Background(), 0, HeaderOnly, WithMode(ModeAuto), WithNetwork("udp4"))
	if err != nil {
		t.Fatalf("auto without CAP_NET_RAW: %v", err)
	}
	defer s.Close()
	if s.Mode() != ModeSocket {
		t.Errorf("without CAP_NET_RAW: mode %v, want socket", s.Mode())
	}
	if _, err := Open(context.Background(), 0, HeaderOnly, WithMode(ModeAuto), WithPortErrors()); !errors.Is(err, os.ErrPermission) {
		t.Errorf("auto with a ring option without CAP_NET_RAW: %v, want the ring's permission error", err)
	}
}

// TestSocketModeInterface binds a socket-mode stream to one of two links:
// it receives what arrives on that one, with its index, and nothing of
// the other.
func TestSocketModeInterface(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	viaA, viaB, ifA, _ := twoLinks(t)
	s := openT(t, 0, Payload, WithMode(ModeSocket), WithInterface("va0"))
	// b first: a stream bound to nothing would take it first.
	viaB(s.Port(), "via b")
	viaA(s.Port(), "via a")
	p := recvOne(t, s.Packets(), 2*time.Second)
	if string(p.Value) != "via a" || p.Header.IfIndex != ifA.Index || p.Header.Dst.Addr() != netip.MustParseAddr("192.0.2.10") {
		t.Fatalf("bound stream got %q on ifindex %d to %v", p.Value, p.Header.IfIndex, p.Header.Dst)
	}
	expectNone(t, s.Packets(), 200*time.Millisecond)
}
