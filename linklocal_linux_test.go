package udpstream

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

// linkLocalOf returns the IPv6 link-local address of interface ifi,
// waiting for the kernel to assign it.
func linkLocalOf(t *testing.T, ifi *net.Interface) netip.Addr {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		addrs, err := ifi.Addrs()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() {
				return p.Addr()
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has no link-local address", ifi.Name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLocalOnItsLink sends datagrams from the wire on one link to
// addresses the host holds on another: an IPv6 link-local address is local
// only on its own link, and one of the host's IPv4 addresses as source is
// refused unless accept_local lets it in, as the kernel rules.
func TestLocalOnItsLink(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	// Link-local addresses usable at once, not tentative for a second.
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_dad", []byte("0"), 0); err != nil {
		t.Fatal(err)
	}
	peerA, macA, a0 := vethPair(t, "a0", "a1")
	_, _, b0 := vethPair(t, "b0", "b1")
	ip(t, "addr", "add", "10.0.0.1/24", "dev", "a0")
	ip(t, "addr", "add", "10.9.9.1/24", "dev", "b0")
	llA, llB := linkLocalOf(t, a0), linkLocalOf(t, b0)
	in := newInjector(t, peerA, macA)

	const port = 40000
	s := openT(t, port, Payload, WithMonitor())
	peer6 := netip.MustParseAddr("fe80::99")
	h6 := v6()
	h6.src = peer6.As16()
	h6.dst = llB.As16()
	in.send(t, h6.udp(4000, port, []byte("to b0's link-local, on a0")))
	h6.dst = llA.As16()
	in.send(t, h6.udp(4000, port, []byte("to a0's link-local")))
	p := recvOne(t, s.Packets(), 2*time.Second)
	if string(p.Value) != "to a0's link-local" {
		t.Fatalf("delivered %q from %v to %v", p.Value, p.Header.Src, p.Header.Dst)
	}
	expectNone(t, s.Packets(), 200*time.Millisecond)
	if st := settled(t, s); st.NotLocal != 1 {
		t.Errorf("another link's link-local address: stats %+v", st)
	}

	// b0's IPv4 address as the source of a datagram on a0.
	h4 := v4()
	h4.src, h4.dst = netip.MustParseAddr("10.9.9.1").As4(), netip.MustParseAddr("10.0.0.1").As4()
	own := h4.udp(4000, port, []byte("from an address of this host"))
	in.send(t, own)
	expectNone(t, s.Packets(), 200*time.Millisecond)
	if st := settled(t, s); st.NotLocal != 2 {
		t.Errorf("own address as source, accept_local off: stats %+v", st)
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/all/accept_local", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openT(t, port, Payload, WithMonitor()) // sysctls are read at Open
	in.send(t, own)
	if p := recvOne(t, s.Packets(), 2*time.Second); string(p.Value) != "from an address of this host" {
		t.Fatalf("accept_local on: delivered %q", p.Value)
	}
}
