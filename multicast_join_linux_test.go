package udpstream

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// procGroups reads this namespace's multicast memberships from
// /proc/net/igmp and /proc/net/igmp6.
func procGroups(t *testing.T) map[membership]struct{} {
	t.Helper()
	groups := map[membership]struct{}{}
	for _, v6 := range []bool{false, true} {
		if err := readProcGroups(groups, v6); err != nil {
			t.Fatal(err)
		}
	}
	return groups
}

// waitGroups waits until interface ifName's membership of each group is
// present (or, with !want, absent) in /proc.
func waitGroups(t *testing.T, ifName string, want bool, groups ...netip.Addr) {
	t.Helper()
	ifi := iface(t, ifName)
	deadline := time.Now().Add(3 * time.Second)
	for {
		have := procGroups(t)
		missing := []netip.Addr{}
		for _, g := range groups {
			if _, ok := have[membership{g, ifi.Index}]; ok != want {
				missing = append(missing, g)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("memberships of %v on %s: want present %v, /proc says otherwise", missing, ifName, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var (
	joinG4, joinG6       = netip.MustParseAddr("239.1.2.3"), netip.MustParseAddr("ff05::db8:1")
	joinSSM4, joinSSM6   = netip.MustParseAddr("232.1.1.1"), netip.MustParseAddr("ff35::db8:1")
	unjoin4, unjoin6     = netip.MustParseAddr("239.5.5.5"), netip.MustParseAddr("ff05::5")
	joinPeer4            = []netip.Addr{netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")}
	joinPeer6            = []netip.Addr{netip.MustParseAddr("2001:db8::2"), netip.MustParseAddr("2001:db8::3")}
	joinHost4, joinHost6 = netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
)

// joinPeerPort is the port the peer of TestJoinPeer sends from and
// listens on.
const joinPeerPort = 7000

// TestJoinPeer joins groups on a veth link to a peer host, which sends to
// them: a joined group reaches the stream once per datagram and family,
// with the group as destination, and also a second stream on another
// port that joined it; an unjoined group does not; a source-specific join
// drops the other source. The stream answers each datagram by unicast from
// its interface's address, and sends to the groups with hop limit 255,
// which the peer sees from that address. When the streams end, their
// memberships are gone.
func TestJoinPeer(t *testing.T) {
	if isPeer(t) {
		joinPeerBody(t)
		return
	}
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	ip(t, "link", "add", "j0", "type", "veth", "peer", "name", "j1")
	ip(t, "link", "set", "j0", "up")
	ip(t, "addr", "add", "192.0.2.1/24", "dev", "j0")
	addr6(t, "2001:db8::1/64", "j0")

	s := openT(t, 0, Payload, WithJoin(joinG4, joinG6))
	s2 := openT(t, 0, Payload, WithJoin(joinG6, joinG4))
	s3 := openT(t, 0, Payload, WithJoinSource(joinSSM4, joinPeer4[1]), WithJoinSource(joinSSM6, joinPeer6[1]))
	waitGroups(t, "j0", true, joinG4, joinG6, joinSSM4, joinSSM6)

	wait := startPeer(t, "j1", "UDPSTREAM_PORTS="+fmt.Sprint(s.Port(), ",", s2.Port(), ",", s3.Port()))

	// take receives the n datagrams each stream should get, as
	// "destination from source", and checks that no more come.
	take := func(name string, st *Stream[[]byte], want ...string) []Packet[[]byte] {
		t.Helper()
		var got []string
		var pkts []Packet[[]byte]
		for range want {
			p := recvOne(t, st.Packets(), 5*time.Second)
			if p.Err != nil {
				t.Fatalf("%s: %v", name, p.Err)
			}
			got = append(got, p.Header.Dst.Addr().WithZone("").String()+" from "+p.Header.Src.Addr().String())
			pkts = append(pkts, p)
		}
		expectNone(t, st.Packets(), 200*time.Millisecond)
		if fmt.Sprint(sorted(got)) != fmt.Sprint(sorted(want)) {
			t.Fatalf("%s: delivered %v, want %v", name, got, want)
		}
		return pkts
	}
	pkts := take("first stream", s, "239.1.2.3 from 192.0.2.2", "ff05::db8:1 from 2001:db8::2")
	take("second stream", s2, "239.1.2.3 from 192.0.2.2", "ff05::db8:1 from 2001:db8::2")
	take("source-specific stream", s3, "232.1.1.1 from 192.0.2.3", "ff35::db8:1 from 2001:db8::3")
	for name, c := range map[string]struct {
		s    *Stream[[]byte]
		want uint64
	}{"first stream": {s, 2}, "source-specific stream": {s3, 2}} {
		if st := settled(t, c.s); st.NotLocal != c.want || st.Delivered != 2 {
			t.Errorf("%s: stats %+v, want 2 delivered and %d not local", name, st, c.want)
		}
	}

	for _, p := range pkts {
		if err := p.Reply([]byte("reply")); err != nil {
			t.Fatalf("reply to %v: %v", p.Header.Dst, err)
		}
	}
	o := SendOptions{TTL: Value(255)}
	if err := s.Send([]byte("to the group"), joinHost4, netip.AddrPortFrom(joinG4, joinPeerPort), o); err != nil {
		t.Fatalf("send to %v: %v", joinG4, err)
	}
	if err := s.Send([]byte("to the group"), joinHost6, netip.AddrPortFrom(joinG6.WithZone("j0"), joinPeerPort), o); err != nil {
		t.Fatalf("send to %v: %v", joinG6, err)
	}
	// The link lasts as long as the peer's namespace: look at the
	// memberships first.
	s.Close()
	waitGroups(t, "j0", true, joinG4, joinG6) // s2 still holds them
	s2.Close()
	s3.Close()
	waitGroups(t, "j0", false, joinG4, joinG6, joinSSM4, joinSSM6)
	out := wait()
	if !strings.Contains(out, "peer heard 4") {
		t.Fatalf("peer output:\n%s", out)
	}
}

func sorted(s []string) []string {
	c := append([]string(nil), s...)
	for i := range c {
		for j := i + 1; j < len(c); j++ {
			if c[j] < c[i] {
				c[i], c[j] = c[j], c[i]
			}
		}
	}
	return c
}

// joinPeerBody is the peer host of TestJoinPeer. It sends from a stream
// of its own, which also joins the groups, and checks what comes back:
// two unicast replies and two group datagrams with hop limit 255, all
// from the host's addresses on the link.
func joinPeerBody(t *testing.T) {
	ifi := peerInterface(t)
	for _, a := range append(joinPeer4, joinPeer6...) {
		if a.Is4() {
			ip(t, "addr", "add", a.String()+"/24", "dev", ifi.Name)
		} else {
			addr6(t, a.String()+"/64", ifi.Name)
		}
	}
	var ports []uint16
	for _, f := range strings.Split(os.Getenv("UDPSTREAM_PORTS"), ",") {
		p, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, uint16(p))
	}
	// A route that takes the IPv6 groups elsewhere: only the zone of
	// the destination sends them over the link.
	vethPair(t, "else0", "else1")
	ip(t, "-6", "route", "add", "multicast", "ff05::/16", "dev", "else0", "table", "local")
	r := openT(t, joinPeerPort, Payload, WithJoin(joinG4, joinG6))
	send := func(from, g netip.Addr, port uint16) {
		t.Helper()
		if g.Is6() {
			g = g.WithZone(ifi.Name)
		}
		if err := r.Send([]byte("hello"), from, netip.AddrPortFrom(g, port), SendOptions{}); err != nil {
			t.Fatalf("send from %v to %v: %v", from, g, err)
		}
	}
	send(joinPeer4[0], joinG4, ports[0])
	send(joinPeer6[0], joinG6, ports[0])
	send(joinPeer4[0], unjoin4, ports[0])
	send(joinPeer6[0], unjoin6, ports[0])
	send(joinPeer4[0], joinG4, ports[1])
	send(joinPeer6[0], joinG6, ports[1])
	for i := range 2 {
		send(joinPeer4[i], joinSSM4, ports[2])
		send(joinPeer6[i], joinSSM6, ports[2])
	}
	want := map[string]bool{
		fmt.Sprintf("reply to 192.0.2.2 from 192.0.2.1:%d", ports[0]):                      true,
		fmt.Sprintf("reply to 2001:db8::2 from [2001:db8::1]:%d", ports[0]):                true,
		fmt.Sprintf("to the group to 239.1.2.3 from 192.0.2.1:%d ttl 255", ports[0]):       true,
		fmt.Sprintf("to the group to ff05::db8:1 from [2001:db8::1]:%d ttl 255", ports[0]): true,
	}
	for range len(want) {
		p := recvOne(t, r.Packets(), 5*time.Second)
		h := p.Header
		got := fmt.Sprintf("%s to %v from %v", p.Value, h.Dst.Addr().WithZone(""), h.Src)
		if h.Dst.Addr().IsMulticast() {
			got += fmt.Sprintf(" ttl %d", h.TTL)
		}
		if !want[got] {
			t.Fatalf("peer heard %q, want one of %v", got, want)
		}
		delete(want, got)
	}
	t.Log("peer heard 4")
}

// TestJoinFollowsInterfaces checks that a stream joins its groups on an
// interface that comes up after it started, and delivers them there; and
// that in monitor mode the memberships are held all the same, and end
// with the stream.
func TestJoinFollowsInterfaces(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	s := openT(t, 0, Payload, WithJoin(joinG4, joinG6))
	mon := openT(t, s.Port(), Payload, WithMonitor(), WithJoin(unjoin4))
	ip(t, "link", "add", "late0", "type", "veth", "peer", "name", "late1")
	ip(t, "addr", "add", "192.0.2.1/24", "dev", "late0")
	addr6(t, "2001:db8::1/64", "late0")
	peer := iface(t, "late1")
	near := iface(t, "late0")
	// Down, the interface is not joined yet; up, it is.
	time.Sleep(50 * time.Millisecond)
	if _, ok := procGroups(t)[membership{joinG4, near.Index}]; ok {
		t.Fatal("joined on an interface that is down")
	}
	linkUp(t, "late1", "late0")
	waitGroups(t, "late0", true, joinG4, joinG6, unjoin4)

	in := newInjector(t, peer, near.HardwareAddr)
	for _, g := range []netip.Addr{joinG4, joinG6} {
		var pkt []byte
		if g.Is4() {
			h := v4()
			h.src, h.dst = joinPeer4[0].As4(), g.As4()
			pkt = h.udp(4000, s.Port(), []byte("late"))
		} else {
			h := v6()
			h.src, h.dst = joinPeer6[0].As16(), g.As16()
			pkt = h.udp(4000, s.Port(), []byte("late"))
		}
		mcastInjector(in, g).send(t, pkt)
		var p Packet[[]byte]
		select {
		case p = <-s.Packets():
		case <-time.After(2 * time.Second):
			t.Fatalf("to %v: nothing within 2s; stats %+v", g, s.Stats())
		}
		if p.Err != nil || p.Header.Dst.Addr().WithZone("") != g || p.Header.IfIndex != near.Index {
			t.Fatalf("to %v: got %v to %v on %d, err %v", g, p.Header.Src, p.Header.Dst, p.Header.IfIndex, p.Err)
		}
	}
	// An interface without addresses or IPv6 is joined too.
	ip(t, "link", "add", "bare0", "type", "veth", "peer", "name", "bare1")
	for _, name := range []string{"bare0", "bare1"} {
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	ip(t, "link", "set", "bare0", "up")
	waitGroups(t, "bare0", true, joinG4, unjoin4)

	mon.Close()
	waitGroups(t, "late0", false, unjoin4)
	s.Close()
	waitGroups(t, "late0", false, joinG4, joinG6)
}

// TestMulticastLoopback sends to a group from the stream: the kernel
// loops the datagram back to the host's members of the group, here a
// plain socket, unless WithMulticastLoopback(false) says not to. (Packet
// sockets never see looped-back copies, so the stream cannot be the
// member: tpacket_rcv drops PACKET_LOOPBACK.)
func TestMulticastLoopback(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	vethPair(t, "lp0", "lp1")
	ip(t, "addr", "add", "192.0.2.1/24", "dev", "lp0")
	addr6(t, "2001:db8::1/64", "lp0")
	member, err := net.ListenUDP("udp", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer member.Close()
	mport := uint16(member.LocalAddr().(*net.UDPAddr).Port)
	// The dual-stack socket joins both families' groups itself.
	m := &groupMember{fd4: sysFD(t, member), fd6: sysFD(t, member)}
	m.set(t, joinG4, "lp0", true)
	m.set(t, joinG6, "lp0", true)
	buf := make([]byte, 100)
	for _, loop := range []bool{true, false} {
		s := openT(t, 0, Payload, WithMulticastLoopback(loop))
		for _, d := range []netip.AddrPort{
			netip.AddrPortFrom(joinG4, mport),
			netip.AddrPortFrom(joinG6.WithZone("lp0"), mport),
		} {
			from := joinHost4
			if d.Addr().Is6() {
				from = joinHost6
			}
			if err := s.Send([]byte("loop"), from, d, SendOptions{}); err != nil {
				t.Fatalf("send to %v: %v", d, err)
			}
			member.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			_, src, err := member.ReadFromUDPAddrPort(buf)
			switch {
			case loop && err != nil:
				t.Fatalf("loopback on: the member did not get the datagram to %v: %v", d, err)
			case loop && src.Addr().Unmap() != from:
				t.Fatalf("loopback on: the datagram to %v came from %v, want %v", d, src, from)
			case !loop && err == nil:
				t.Fatalf("loopback off: the member got the datagram to %v", d)
			}
		}
		s.Close()
	}
}

// sysFD returns c's file descriptor, which stays c's.
func sysFD(t *testing.T, c *net.UDPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// TestJoinBridge joins groups on a bridge with two peer hosts on its
// ports, one sending to the groups, the other a member of them: the
// stream receives each datagram once, on the bridge (the ports hand their
// frames to it), and the other member hears the sender too.
func TestJoinBridge(t *testing.T) {
	if isPeer(t) {
		ifi := peerInterface(t)
		port, _ := strconv.Atoi(os.Getenv("UDPSTREAM_PORT"))
		host := map[string]int{"ba1": 0, "bb1": 1}[ifi.Name]
		ip(t, "addr", "add", joinPeer4[host].String()+"/24", "dev", ifi.Name)
		addr6(t, joinPeer6[host].String()+"/64", ifi.Name)
		if host == 1 {
			// The member: it hears the sender's datagrams to the port.
			r := openT(t, uint16(port), Payload, WithJoin(joinG4, joinG6))
			heard := map[bool]bool{}
			for len(heard) < 2 {
				p := recvOne(t, r.Packets(), 10*time.Second)
				if p.Err == nil && (p.Header.Src.Addr() == joinPeer4[0] || p.Header.Src.Addr() == joinPeer6[0]) {
					heard[p.Header.Version == 4] = true
				}
			}
			return
		}
		// The sender: numbered datagrams, until the member has had time
		// to start.
		r := openT(t, 0, Payload)
		for i := range 40 {
			for _, d := range []netip.AddrPort{
				netip.AddrPortFrom(joinG4, uint16(port)),
				netip.AddrPortFrom(joinG6.WithZone(ifi.Name), uint16(port)),
			} {
				from := joinPeer4[0]
				if d.Addr().Is6() {
					from = joinPeer6[0]
				}
				if err := r.Send([]byte(strconv.Itoa(i)), from, d, SendOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(25 * time.Millisecond)
		}
		return
	}
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	ip(t, "link", "add", "br0", "type", "bridge")
	ip(t, "link", "set", "br0", "up")
	ip(t, "addr", "add", "192.0.2.1/24", "dev", "br0")
	addr6(t, "2001:db8::1/64", "br0")
	for _, p := range []string{"ba", "bb"} {
		ip(t, "link", "add", p+"0", "type", "veth", "peer", "name", p+"1")
		ip(t, "link", "set", p+"0", "master", "br0")
		ip(t, "link", "set", p+"0", "up")
	}
	br := iface(t, "br0")
	s := openT(t, 0, Payload, WithJoin(joinG4, joinG6))
	waitGroups(t, "br0", true, joinG4, joinG6)
	env := "UDPSTREAM_PORT=" + strconv.Itoa(int(s.Port()))
	waitMember := startPeer(t, "bb1", env)
	waitSender := startPeer(t, "ba1", env)
	seen := map[string]bool{}
	for len(seen) < 80 {
		p := recvOne(t, s.Packets(), 10*time.Second)
		if p.Err != nil {
			t.Fatal(p.Err)
		}
		key := fmt.Sprintf("%s to %v", p.Value, p.Header.Dst.Addr().WithZone(""))
		if seen[key] {
			t.Fatalf("%s: delivered twice", key)
		}
		seen[key] = true
		if p.Header.IfIndex != br.Index {
			t.Fatalf("%s: arrived on interface %d, want the bridge, %d", key, p.Header.IfIndex, br.Index)
		}
	}
	expectNone(t, s.Packets(), 200*time.Millisecond)
	waitSender()
	waitMember()
}
