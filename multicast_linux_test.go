package udpstream

import (
	"maps"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// mcastInjector returns in sending to the link-layer address of group g
// (RFC 2464, 7; RFC 1112, 6.4).
func mcastInjector(in *injector, g netip.Addr) *injector {
	c := *in
	if g.Is6() {
		b := g.As16()
		c.dst = net.HardwareAddr{0x33, 0x33, b[12], b[13], b[14], b[15]}
	} else {
		b := g.As4()
		c.dst = net.HardwareAddr{0x01, 0, 0x5e, b[1] & 0x7f, b[2], b[3]}
	}
	return &c
}

// groupMember is a socket of the test's own that holds memberships.
type groupMember struct{ fd4, fd6 int }

func newGroupMember(t *testing.T) *groupMember {
	t.Helper()
	m := &groupMember{}
	var err error
	if m.fd4, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(m.fd4) })
	if m.fd6, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(m.fd6) })
	return m
}

// set joins (or leaves) group g on interface ifName.
func (m *groupMember) set(t *testing.T, g netip.Addr, ifName string, join bool) {
	t.Helper()
	ifi := iface(t, ifName)
	var err error
	if g.Is4() {
		op := unix.IP_ADD_MEMBERSHIP
		if !join {
			op = unix.IP_DROP_MEMBERSHIP
		}
		err = unix.SetsockoptIPMreqn(m.fd4, unix.IPPROTO_IP, op, &unix.IPMreqn{Multiaddr: g.As4(), Ifindex: int32(ifi.Index)})
	} else {
		op := unix.IPV6_JOIN_GROUP
		if !join {
			op = unix.IPV6_LEAVE_GROUP
		}
		err = unix.SetsockoptIPv6Mreq(m.fd6, unix.IPPROTO_IPV6, op, &unix.IPv6Mreq{Multiaddr: g.As16(), Interface: uint32(ifi.Index)})
	}
	if err != nil {
		t.Fatalf("membership of %v on %s: %v", g, ifName, err)
	}
}

// TestMulticastMembership checks that a datagram to a group is delivered
// when the interface it arrives on belongs to the group, whoever joined
// it, and counted NotLocal otherwise; IPv4 multicast reaches only a
// stream standing for an IPv4 socket (udp4), as the kernel's
// IP_MULTICAST_ALL default on AF_INET sockets, off on AF_INET6 ones, has
// it.
func TestMulticastMembership(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	in := injectLink(t, "192.0.2.10/24", "2001:db8::10/64")
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/in1/disable_ipv6", []byte("1"), 0)
	m := newGroupMember(t)
	joined4, joined6 := netip.MustParseAddr("239.1.2.3"), netip.MustParseAddr("ff12::db8:1")
	onLo4, onLo6 := netip.MustParseAddr("239.9.9.9"), netip.MustParseAddr("ff05::db8:2")
	m.set(t, joined4, "in0", true)
	m.set(t, joined6, "in0", true)
	m.set(t, onLo4, "lo", true)
	m.set(t, onLo6, "lo", true)

	dual := openT(t, 0, Payload)
	v4only := openT(t, dual.Port(), Payload, WithMonitor(), WithNetwork("udp4"))
	v6only := openT(t, dual.Port(), Payload, WithMonitor(), WithNetwork("udp6"))
	port := dual.Port()

	send := func(src, g netip.Addr) {
		t.Helper()
		var pkt []byte
		if g.Is4() {
			h := v4()
			h.src, h.dst = src.As4(), g.As4()
			pkt = h.udp(4000, port, []byte(g.String()))
		} else {
			h := v6()
			h.src, h.dst = src.As16(), g.As16()
			pkt = h.udp(4000, port, []byte(g.String()))
		}
		mcastInjector(in, g).send(t, pkt)
	}
	peer4, peer6 := netip.MustParseAddr("192.0.2.99"), netip.MustParseAddr("2001:db8::99")
	allNodes, solicited := netip.MustParseAddr("ff02::1"), netip.MustParseAddr("ff02::1:ff00:10")
	allHosts := netip.MustParseAddr("224.0.0.1")
	unjoined4, unjoined6 := netip.MustParseAddr("239.5.5.5"), netip.MustParseAddr("ff0e::1234")
	for _, g := range []netip.Addr{allNodes, solicited, joined6, onLo6, unjoined6} {
		send(peer6, g)
	}
	for _, g := range []netip.Addr{allHosts, joined4, onLo4, unjoined4} {
		send(peer4, g)
	}
	// 0.0.0.0 may send to 224.0.0.0/24 only (ip_mc_validate_source).
	send(netip.IPv4Unspecified(), allHosts)
	send(netip.IPv4Unspecified(), joined4)

	// receive takes n datagrams from s, keyed by destination and source,
	// and checks that no more come.
	receive := func(name string, s *Stream[[]byte], n int) map[[2]string]bool {
		t.Helper()
		got := map[[2]string]bool{}
		for range n {
			p := recvOne(t, s.Packets(), 2*time.Second)
			if p.Err != nil {
				t.Fatalf("%s: %v", name, p.Err)
			}
			got[[2]string{p.Header.Dst.Addr().String(), p.Header.Src.Addr().String()}] = true
		}
		expectNone(t, s.Packets(), 100*time.Millisecond)
		return got
	}
	want6 := map[[2]string]bool{
		{"ff02::1%in0", peer6.String()}:         true,
		{"ff02::1:ff00:10%in0", peer6.String()}: true,
		{"ff12::db8:1%in0", peer6.String()}:     true,
	}
	for name, s := range map[string]*Stream[[]byte]{"udp": dual, "udp6": v6only} {
		if got := receive(name, s, len(want6)); !maps.Equal(got, want6) {
			t.Errorf("%s: delivered %v, want %v", name, got, want6)
		}
	}
	want4 := map[[2]string]bool{
		{allHosts.String(), peer4.String()}: true,
		{joined4.String(), peer4.String()}:  true,
		{allHosts.String(), "0.0.0.0"}:      true,
	}
	if got := receive("udp4", v4only, len(want4)); !maps.Equal(got, want4) {
		t.Errorf("udp4: delivered %v, want %v", got, want4)
	}
	// Not delivered: a group only lo is in and one nobody joined, of each
	// family, and IPv4 multicast to a dual-stack socket; 0.0.0.0 to
	// joined4 is a martian whatever the socket.
	if st := waitStats(t, dual, func(s Stats) bool { return s.NotLocal >= 2+5 && s.Martian >= 1 }); st.NotLocal != 2+5 || st.Martian != 1 {
		t.Errorf("udp: %+v, want 7 not local, 1 martian", st)
	}
	if st := waitStats(t, v6only, func(s Stats) bool { return s.NotLocal >= 2 }); st.NotLocal != 2 {
		t.Errorf("udp6: %+v, want 2 not local", st)
	}
	if st := waitStats(t, v4only, func(s Stats) bool { return s.NotLocal >= 2 && s.Martian >= 1 }); st.NotLocal != 2 || st.Martian != 1 {
		t.Errorf("udp4: %+v, want 2 not local, 1 martian", st)
	}

	// A group joined while the stream runs counts from the next
	// datagram, and one left stops counting once the kernel has said so.
	fresh4, fresh6 := netip.MustParseAddr("239.7.7.7"), netip.MustParseAddr("ff15::77")
	m.set(t, fresh4, "in0", true)
	m.set(t, fresh6, "in0", true)
	send(peer4, fresh4)
	send(peer6, fresh6)
	if p := recvOne(t, v4only.Packets(), 2*time.Second); p.Header.Dst.Addr() != fresh4 {
		t.Errorf("udp4: delivered %v, want %v", p.Header.Dst, fresh4)
	}
	if p := recvOne(t, dual.Packets(), 2*time.Second); p.Header.Dst.Addr() != fresh6 {
		t.Errorf("udp: delivered %v, want %v", p.Header.Dst, fresh6)
	}
	expectNone(t, dual.Packets(), 50*time.Millisecond)
	m.set(t, fresh4, "in0", false)
	m.set(t, fresh6, "in0", false)
	in0 := iface(t, "in0")
	deadline := time.Now().Add(2 * time.Second)
	for {
		set4, set6 := v4only.sys.local.cur.Load(), dual.sys.local.cur.Load()
		if !set4.member(fresh4, in0.Index) && !set6.member(fresh6, in0.Index) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the streams never saw the groups left")
		}
		time.Sleep(time.Millisecond)
	}
	send(peer4, fresh4)
	send(peer6, fresh6)
	// The dual-stack stream counted fresh4 both times.
	waitStats(t, v4only, func(s Stats) bool { return s.NotLocal == 2+1 })
	waitStats(t, dual, func(s Stats) bool { return s.NotLocal == 7+3 })
	expectNone(t, v4only.Packets(), 50*time.Millisecond)
	expectNone(t, dual.Packets(), 50*time.Millisecond)
}

// TestProcGroups checks the reading of /proc/net/igmp and igmp6, the
// fallback for kernels that cannot dump memberships, against the
// kernel's netlink dump.
func TestProcGroups(t *testing.T) {
	if !inNetns(t) {
		return
	}
	injectLink(t, "192.0.2.10/24", "2001:db8::10/64")
	m := newGroupMember(t)
	m.set(t, netip.MustParseAddr("239.1.2.3"), "in0", true)
	m.set(t, netip.MustParseAddr("ff12::db8:1"), "in0", true)
	m.set(t, netip.MustParseAddr("239.9.9.9"), "lo", true)

	dumped, ok := dumpGroups()
	if !ok {
		t.Fatal("dump interrupted")
	}
	read := procGroups(t)
	if len(dumped) < 7 || !maps.Equal(read, dumped) {
		t.Fatalf("/proc says %v, netlink %v", read, dumped)
	}
}
