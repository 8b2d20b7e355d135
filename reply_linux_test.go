package udpstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestReplyFromDestination gives the host two addresses of each family and
// checks that a reply to a datagram sent to the second leaves from exactly
// that address and port.
func TestReplyFromDestination(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	vethPair(t, "d0", "d1")
	for _, a := range []string{"192.0.2.1/24", "192.0.2.2/24"} {
		ip(t, "addr", "add", a, "dev", "d0")
	}
	for _, a := range []string{"2001:db8::1/64", "2001:db8::2/64"} {
		addr6(t, a, "d0")
	}
	s := openT(t, 0, Payload)
	go func() {
		for p := range s.Packets() {
			if p.Err == nil {
				p.Reply(append([]byte("re: "), p.Value...))
			}
		}
	}()
	for _, dst := range []string{"192.0.2.2", "2001:db8::2"} {
		network := "udp4"
		if netip.MustParseAddr(dst).Is6() {
			network = "udp6"
		}
		c, err := net.ListenPacket(network, ":0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		uc := c.(*net.UDPConn)
		to := netip.AddrPortFrom(netip.MustParseAddr(dst), s.Port())
		if _, err := uc.WriteToUDPAddrPort([]byte("hello"), to); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		uc.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err := uc.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("%s: no reply: %v", dst, err)
		}
		if from.Addr().Unmap() != to.Addr() || from.Port() != to.Port() || string(buf[:n]) != "re: hello" {
			t.Fatalf("%s: reply %q from %v, want from %v", dst, buf[:n], from, to)
		}
	}
}

// TestReplyHeaderFields has one stream answer another with a chosen TTL
// and TOS, per call and per stream, and reads them off the received
// header; it also covers Stream.Send.
func TestReplyHeaderFields(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	def := SendOptions{TTL: Value(9), TOS: Value(0xb8)}
	server := openT(t, 0, Payload, WithSendOptions(def))
	client := openT(t, 0, Payload)
	for _, addr := range []string{"127.0.0.1", "::1"} {
		dst := netip.AddrPortFrom(netip.MustParseAddr(addr), server.Port())
		// A call may set a field to zero over the stream's default.
		for i, perCall := range []SendOptions{{}, {TTL: Value(3), TOS: Value(0x28 | 1)}, {TOS: Value(0)}, {TTL: Value(255)}} {
			if err := client.Send([]byte("ping"), netip.Addr{}, dst, SendOptions{TTL: Value(200)}); err != nil {
				t.Fatalf("Send: %v", err)
			}
			req := recvOne(t, server.Packets(), 2*time.Second)
			if req.Header.TTL != 200 || req.Header.Dst != dst {
				t.Fatalf("request ttl %d dst %v", req.Header.TTL, req.Header.Dst)
			}
			if err := req.ReplyWith([]byte("pong"), perCall); err != nil {
				t.Fatalf("ReplyWith: %v", err)
			}
			rep := recvOne(t, client.Packets(), 2*time.Second)
			want := perCall.merged(def)
			ttl, _ := want.TTL.Get()
			tos, _ := want.TOS.Get()
			if rep.Header.TTL != ttl || rep.Header.TOS != tos || rep.Header.Src != dst || string(rep.Value) != "pong" {
				t.Fatalf("%s case %d: reply ttl %d tos %#x from %v, want ttl %d tos %#x from %v",
					addr, i, rep.Header.TTL, rep.Header.TOS, rep.Header.Src, ttl, tos, dst)
			}
		}
	}
	if err := client.Send(nil, netip.Addr{}, netip.MustParseAddrPort("127.0.0.1:9"), SendOptions{TTL: Value(0)}); !errors.Is(err, ErrOption) {
		t.Fatalf("TTL 0: %v, want an error wrapping ErrOption", err)
	}
}

// TestReplyErrors checks sending without a socket, after the end, and a
// kernel error.
func TestReplyErrors(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	s := openT(t, 0, Payload)
	mon := openT(t, s.Port(), Payload, WithMonitor(), WithNetwork("udp4"))
	c := udpSender(t, "udp4", 64, 0)
	sendTo(t, c, "127.0.0.1", s.Port(), []byte("x"))
	p := recvOne(t, s.Packets(), 2*time.Second)
	pm := recvOne(t, mon.Packets(), 2*time.Second)
	if err := pm.Reply([]byte("y")); !errors.Is(err, ErrNoSender) {
		t.Fatalf("monitor reply: %v", err)
	}
	if err := p.Reply(make([]byte, 70000)); !errors.Is(err, syscall.EMSGSIZE) {
		t.Fatalf("oversized reply: %v, want EMSGSIZE", err)
	}
	s.Close()
	if err := p.Reply([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("reply after Close: %v, want net.ErrClosed", err)
	}
}

// TestReplyRacesClose replies from many goroutines while the stream is
// cancelled: every reply either goes out or fails with net.ErrClosed.
func TestReplyRacesClose(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Open(ctx, 0, Payload, WithChannelCapacity(1024))
	if err != nil {
		t.Fatal(err)
	}
	c := udpSender(t, "udp4", 64, 0)
	for range 64 {
		sendTo(t, c, "127.0.0.1", s.Port(), []byte("q"))
	}
	var pkts []Packet[[]byte]
	for len(pkts) < 64 {
		pkts = append(pkts, recvOne(t, s.Packets(), 2*time.Second))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var bad []error
	for _, p := range pkts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if err := p.Reply([]byte("a")); err != nil && !errors.Is(err, net.ErrClosed) {
					mu.Lock()
					bad = append(bad, err)
					mu.Unlock()
				}
			}
		}()
	}
	cancel()
	wg.Wait()
	s.Close()
	if len(bad) > 0 {
		t.Fatalf("%d replies failed with unexpected errors, first: %v", len(bad), bad[0])
	}
}

// TestReplyLinkLocal answers two peer hosts across two veth links, to and
// from IPv6 link-local addresses, where both peers have the same address:
// each datagram's source must carry its link as zone, and each reply must
// leave by the link its datagram came in on.
func TestReplyLinkLocal(t *testing.T) {
	if isPeer(t) {
		ifi := peerInterface(t)
		addr6(t, "fe80::2/64", ifi.Name)
		port, _ := strconv.Atoi(os.Getenv("UDPSTREAM_PORT"))
		c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.ParseIP("fe80::2"), Zone: ifi.Name})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		dst := &net.UDPAddr{IP: net.ParseIP("fe80::1"), Port: port, Zone: ifi.Name}
		msg := "link-local from " + ifi.Name
		buf := make([]byte, 100)
		for range 50 { // the receiver may not be reading yet: retry
			c.WriteToUDP([]byte(msg), dst)
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				continue
			}
			if !from.IP.Equal(dst.IP) || from.Port != port || string(buf[:n]) != "re: "+msg {
				t.Fatalf("reply %q from %v, want %q", buf[:n], from, "re: "+msg)
			}
			return
		}
		t.Fatal("no reply over the link")
	}
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	// Two links, the same addresses at both ends of each: only the
	// interface tells the two peers apart.
	for _, l := range [][2]string{{"ll0", "ll1"}, {"ll2", "ll3"}} {
		ip(t, "link", "add", l[0], "type", "veth", "peer", "name", l[1])
		ip(t, "link", "set", l[0], "up")
		addr6(t, "fe80::1/64", l[0])
	}
	s := openT(t, 0, Payload, WithNetwork("udp6"))
	peerOf := map[string]string{"ll0": "ll1", "ll2": "ll3"}
	bad := make(chan string, 100)
	go func() {
		for p := range s.Packets() {
			if p.Err != nil {
				continue
			}
			zone, dzone := p.Header.Src.Addr().Zone(), p.Header.Dst.Addr().Zone()
			if want := "link-local from " + peerOf[zone]; string(p.Value) != want || dzone != zone {
				bad <- fmt.Sprintf("%q from %v to %v: zones do not name its link", p.Value, p.Header.Src, p.Header.Dst)
			}
			p.Reply(append([]byte("re: "), p.Value...))
		}
	}()
	wait1 := startPeer(t, "ll1", "UDPSTREAM_PORT="+strconv.Itoa(int(s.Port())))
	wait3 := startPeer(t, "ll3", "UDPSTREAM_PORT="+strconv.Itoa(int(s.Port())))
	wait1()
	wait3()
	select {
	case m := <-bad:
		t.Fatal(m)
	default:
	}
}

// TestReplyAllocs checks that a reply allocates nothing of its own.
func TestReplyAllocs(t *testing.T) {
	if !inNetns(t) {
		return
	}
	for _, mode := range []Mode{ModeRing, ModeKernel} {
		testReplyAllocs(t, openT(t, 0, HeaderOnly, WithMode(mode)))
	}
}

func testReplyAllocs(t *testing.T, s *Stream[struct{}]) {
	for _, network := range []string{"udp4", "udp6"} {
		c := udpSender(t, network, 64, 0)
		addr := "127.0.0.1"
		if network == "udp6" {
			addr = "::1"
		}
		sendTo(t, c, addr, s.Port(), []byte("q"))
		p := recvOne(t, s.Packets(), 2*time.Second)
		payload := []byte("answer")
		opts := SendOptions{TTL: Value(9), TOS: Value(0x10)}
		allocs := testing.AllocsPerRun(200, func() {
			if err := p.ReplyWith(payload, opts); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%v, %s: %.1f allocations per reply, want 0", s.Mode(), network, allocs)
		}
	}
}

// TestReplyToBroadcast answers a datagram a peer on the link sent to the
// subnet broadcast address: the reply comes from the interface's own
// address and goes back across the link.
func TestReplyToBroadcast(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	in := injectLink(t, "192.0.2.1/24")
	peer := iface(t, "in1")
	// The peer end has no address of its own in this namespace: a static
	// neighbour entry sends 192.0.2.2 across the link, where a monitoring
	// stream on in1 sees what arrives.
	ip(t, "neigh", "add", "192.0.2.2", "lladdr", peer.HardwareAddr.String(), "dev", "in0")
	s := openT(t, 0, Payload, WithNetwork("udp4"))
	const cport = 5555
	watch := openT(t, cport, Payload, WithMonitor(), WithNetwork("udp4"), WithInterface("in1"), WithAnyDestination())
	h := v4()
	h.src, h.dst = netip.MustParseAddr("192.0.2.2").As4(), netip.MustParseAddr("192.0.2.255").As4()
	in.send(t, h.udp(cport, s.Port(), []byte("anyone?")))
	p := recvOne(t, s.Packets(), 2*time.Second)
	if p.Header.Dst.Addr() != netip.MustParseAddr("192.0.2.255") {
		t.Fatalf("destination %v", p.Header.Dst)
	}
	if err := p.Reply([]byte("here")); err != nil {
		t.Fatalf("reply to a broadcast: %v", err)
	}
	r := recvOne(t, watch.Packets(), 2*time.Second)
	if string(r.Value) != "here" || r.Header.Src != netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), s.Port()) ||
		r.Header.Dst.Addr() != netip.MustParseAddr("192.0.2.2") {
		t.Fatalf("reply %q from %v to %v, want from 192.0.2.1:%d to 192.0.2.2", r.Value, r.Header.Src, r.Header.Dst, s.Port())
	}

	// The host's own address as source, from the wire, is a spoof the
	// kernel drops: so does the stream.
	h.src = netip.MustParseAddr("192.0.2.1").As4()
	in.send(t, h.udp(cport, s.Port(), []byte("spoofed")))
	expectNone(t, s.Packets(), 200*time.Millisecond)
	if st := settled(t, s); st.NotLocal != 1 {
		t.Fatalf("stats %+v, want the spoofed datagram counted as not local", st)
	}
}
