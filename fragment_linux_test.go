package udpstream

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"
)

// bigPayload is a recognisable payload of n bytes.
func bigPayload(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) + seed
	}
	return b
}

// TestFragmentedByKernel has a peer host send datagrams larger than the
// link MTU with an ordinary UDP socket, so that its kernel fragments them,
// and checks they arrive once and whole, over both families.
func TestFragmentedByKernel(t *testing.T) {
	sizes := []int{4000, 60000}
	if isPeer(t) {
		ifi := peerInterface(t)
		ip(t, "addr", "add", "192.0.2.2/24", "dev", ifi.Name)
		addr6(t, "2001:db8::2/64", ifi.Name)
		port, _ := strconv.Atoi(os.Getenv("UDPSTREAM_PORT"))
		for _, dst := range []string{"192.0.2.1", "2001:db8::1"} {
			c, err := net.ListenPacket("udp", ":0")
			if err != nil {
				t.Fatal(err)
			}
			for i, n := range sizes {
				to := netip.AddrPortFrom(netip.MustParseAddr(dst), uint16(port))
				if _, err := c.(*net.UDPConn).WriteToUDPAddrPort(bigPayload(n, byte(i)), to); err != nil {
					t.Fatalf("send %d bytes to %v: %v", n, to, err)
				}
			}
			c.Close()
		}
		return
	}
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	ip(t, "link", "add", "fr0", "type", "veth", "peer", "name", "fr1")
	ip(t, "link", "set", "fr0", "up")
	ip(t, "addr", "add", "192.0.2.1/24", "dev", "fr0")
	addr6(t, "2001:db8::1/64", "fr0")
	s := openT(t, 0, Payload)
	wait := startPeer(t, "fr1", "UDPSTREAM_PORT="+strconv.Itoa(int(s.Port())))
	defer wait()
	for i := range 2 * len(sizes) {
		var p Packet[[]byte]
		select {
		case p = <-s.Packets():
		case <-time.After(5 * time.Second):
			t.Fatalf("datagram %d of %d did not arrive; stats %+v", i+1, 2*len(sizes), s.Stats())
		}
		if p.Err != nil {
			t.Fatalf("error: %v", p.Err)
		}
		i := 0
		if len(p.Value) != sizes[0] {
			i = 1
		}
		if !bytes.Equal(p.Value, bigPayload(sizes[i], byte(i))) {
			t.Fatalf("ipv%d %d-byte datagram arrived altered (got %d bytes)", p.Header.Version, sizes[i], len(p.Value))
		}
		// A 1500-byte link carries 1480 (IPv4) or 1448 (IPv6 with a
		// Fragment header) bytes of the datagram per fragment.
		per := 1480
		if p.Header.Version == 6 {
			per = 1448
		}
		if want := (sizes[i] + 8 + per - 1) / per; p.Header.Fragments != want {
			t.Errorf("ipv%d %d bytes: %d fragments, want %d", p.Header.Version, sizes[i], p.Header.Fragments, want)
		}
		if p.Header.Version == 6 && (len(p.Header.ExtHeaders) != 1 || p.Header.ExtHeaders[0] != nhFragment || p.Header.ID == 0) {
			t.Errorf("ipv6 fragmented datagram: ext %v id %d", p.Header.ExtHeaders, p.Header.ID)
		}
		if p.Header.Version == 4 && !p.Header.MF {
			t.Errorf("ipv4 reassembled datagram should report its first fragment's MF")
		}
	}
	expectNone(t, s.Packets(), 100*time.Millisecond)
	// The peer's multicast listener reports (ICMPv6 behind a Hop-by-Hop
	// header) pass the kernel filter and are counted as not UDP.
	if st := settled(t, s); st.Delivered != 4 || st.Dropped() != st.NotUDP {
		t.Fatalf("stats %+v", st)
	}
}

// TestFragmentedInjected injects hand-built fragments across a veth link:
// in reverse order they arrive whole; overlapping ones and ones for
// another port are counted, not delivered.
func TestFragmentedInjected(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	in := injectLink(t, "192.0.2.1/24", "2001:db8::1/64")
	s := openT(t, 0, Payload)

	srcs := map[uint8][2]netip.Addr{
		4: {netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.1")},
		6: {netip.MustParseAddr("2001:db8::2"), netip.MustParseAddr("2001:db8::1")},
	}
	for _, v := range []uint8{4, 6} {
		a := srcs[v]
		sent := newReasmSent(v, a[0], a[1], 77, bigPayload(3000, v))
		sent.dport = s.Port()
		sent.seal()
		frags := sent.split(1000)
		for i := len(frags) - 1; i >= 0; i-- {
			in.send(t, frags[i])
		}
		p := recvOne(t, s.Packets(), 2*time.Second)
		if p.Err != nil || !bytes.Equal(p.Value, bigPayload(3000, v)) || p.Header.Fragments != len(frags) || p.Header.TTL != sent.ttl {
			t.Fatalf("ipv%d reversed fragments: err %v, %d bytes, %d fragments, ttl %d", v, p.Err, len(p.Value), p.Header.Fragments, p.Header.TTL)
		}

		// Overlap: the second fragment starts 8 bytes inside the first.
		ov := newReasmSent(v, a[0], a[1], 78, bigPayload(3000, v))
		ov.dport = s.Port()
		ov.seal()
		in.send(t, ov.fragment(0, 1000, true))
		in.send(t, ov.fragment(992, 1000, true))
		in.send(t, ov.fragment(1992, len(ov.udp)-1992, false))

		other := newReasmSent(v, a[0], a[1], 79, bigPayload(3000, v))
		other.dport = s.Port() + 1
		other.seal()
		for _, f := range other.split(1000) {
			in.send(t, f)
		}
	}
	expectNone(t, s.Packets(), 200*time.Millisecond)
	if st := settled(t, s); st.Delivered != 2 || st.FragOverlap != 2 || st.OtherPort != 2 {
		t.Fatalf("stats %+v, want 2 delivered, 2 overlaps, 2 for another port", st)
	}
}

// keptFragments is what a decoder copies of Datagram.Fragments.
type keptFragments struct {
	payload []byte
	frags   []Fragment // IP copied
}

func decodeFragments(d *Datagram) (keptFragments, error) {
	k := keptFragments{payload: bytes.Clone(d.Payload())}
	for _, f := range d.Fragments() {
		f.IP = bytes.Clone(f.IP)
		k.frags = append(k.frags, f)
	}
	return k, nil
}

// TestFragmentsKept injects the fragments of datagrams in a shuffled
// order, one sent twice, across a veth link to a stream WithFragments:
// each datagram comes with its fragments byte for byte as they went on
// the wire, in the order sent, the duplicate once, on the link, with
// kernel times in order, the last one the datagram's; an unfragmented
// datagram has none, and a stream without the option shows none.
func TestFragmentsKept(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	in := injectLink(t, "192.0.2.1/24", "2001:db8::1/64")
	s := openT(t, 0, decodeFragments, WithFragments())
	plain := openT(t, 0, decodeFragments)
	ifi, err := net.InterfaceByName("in0")
	if err != nil {
		t.Fatal(err)
	}
	addrs := map[uint8][2]netip.Addr{
		4: {netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.1")},
		6: {netip.MustParseAddr("2001:db8::2"), netip.MustParseAddr("2001:db8::1")},
	}
	for _, v := range []uint8{4, 6} {
		a := addrs[v]
		for _, st := range []*Stream[keptFragments]{s, plain} {
			sent := newReasmSent(v, a[0], a[1], 0x5151, bigPayload(5000, v))
			sent.dport = st.Port()
			sent.ttl = 33
			sent.seal()
			frags := sent.split(1232)
			order := []int{2, 0, 4, 1, 3}
			if len(frags) != len(order) {
				t.Fatalf("%d fragments", len(frags))
			}
			var wire [][]byte
			for i, j := range order {
				in.send(t, frags[j])
				wire = append(wire, frags[j])
				if i == 1 {
					in.send(t, frags[j]) // a duplicate on the wire
				}
			}
			p := recvOne(t, st.Packets(), 2*time.Second)
			if p.Err != nil || !bytes.Equal(p.Value.payload, sent.payload) || p.Header.Fragments != len(frags) {
				t.Fatalf("ipv%d: err %v, %d bytes, %d fragments", v, p.Err, len(p.Value.payload), p.Header.Fragments)
			}
			got := p.Value.frags
			if st == plain {
				if got != nil {
					t.Errorf("ipv%d without WithFragments: %d fragments shown", v, len(got))
				}
				continue
			}
			if len(got) != len(wire) {
				t.Fatalf("ipv%d: %d fragments, %d sent (and a duplicate)", v, len(got), len(wire))
			}
			for i, f := range got {
				if !bytes.Equal(f.IP, wire[i]) {
					t.Errorf("ipv%d fragment %d: % x\nwant (as sent) % x", v, i, f.IP[:min(len(f.IP), 48)], wire[i][:48])
				}
				if f.IfIndex != ifi.Index {
					t.Errorf("ipv%d fragment %d on interface %d, want in0 (%d)", v, i, f.IfIndex, ifi.Index)
				}
				if i > 0 && f.Time.Before(got[i-1].Time) || f.Time.IsZero() {
					t.Errorf("ipv%d fragment %d at %v, after %v", v, i, f.Time, got[max(i-1, 0)].Time)
				}
			}
			if last := got[len(got)-1].Time; !last.Equal(p.Header.Time) {
				t.Errorf("ipv%d: last fragment at %v, datagram at %v", v, last, p.Header.Time)
			}
			if d := time.Since(got[0].Time); d < 0 || d > time.Minute {
				t.Errorf("ipv%d: first fragment %v ago: not the kernel's clock", v, d)
			}
		}
	}
	// An unfragmented datagram has none.
	c := udpSender(t, "udp4", 64, 0)
	sendTo(t, c, "127.0.0.1", s.Port(), []byte("whole"))
	if p := recvOne(t, s.Packets(), 2*time.Second); p.Err != nil || string(p.Value.payload) != "whole" || p.Value.frags != nil {
		t.Errorf("unfragmented datagram: err %v, payload %q, %d fragments", p.Err, p.Value.payload, len(p.Value.frags))
	}
	expectNone(t, s.Packets(), 100*time.Millisecond)
}
