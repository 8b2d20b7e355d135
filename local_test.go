package udpstream

import (
	"net/netip"
	"testing"
	"time"
)

// TestLookupRefreshBound checks that a miss refreshes the address set at
// once, that a new address the refresh brings counts on that same call,
// and that a stream of misses refreshes at most once per missRefreshEvery.
func TestLookupRefreshBound(t *testing.T) {
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("198.51.100.9")
	l := &localAddrs{}
	l.cur.Store(&addrSet{exact: map[netip.Addr]struct{}{a: {}}})
	refreshes := 0
	l.refresh = func() bool {
		refreshes++
		if refreshes == 1 { // b was added a moment ago
			l.cur.Store(&addrSet{exact: map[netip.Addr]struct{}{a: {}, b: {}}})
			return true
		}
		return false
	}
	if _, ok := l.lookup(b); !ok || refreshes != 1 {
		t.Fatalf("lookup of a just-added address: %v after %d refreshes, want true after 1", ok, refreshes)
	}
	if _, ok := l.lookup(a); !ok || refreshes != 1 {
		t.Fatalf("a hit refreshed (%d) or missed", refreshes)
	}

	start := time.Now()
	const misses = 200000
	for range misses {
		if _, ok := l.lookup(c); ok {
			t.Fatal("a foreign address counted local")
		}
	}
	elapsed := time.Since(start)
	if most := 2 + int(elapsed/missRefreshEvery); refreshes > most {
		t.Fatalf("%d misses in %v refreshed %d times, want at most %d", misses, elapsed, refreshes, most)
	}
	t.Logf("%d misses in %v: %d refreshes", misses, elapsed, refreshes)

	time.Sleep(2 * missRefreshEvery)
	before := refreshes
	l.lookup(c)
	if refreshes != before+1 {
		t.Fatal("a miss after a quiet interval did not refresh")
	}
}

// TestIsLocalManySources checks the answer isLocal remembers: a unicast
// destination it said yes to stays local for any source, each judged on
// its own (loopback and this host's own IPv4 addresses refused off a
// loopback interface), without allocating, and a multicast answer holds
// for its source alone.
func TestIsLocalManySources(t *testing.T) {
	const lo, eth = 1, 2
	own := netip.MustParseAddr("192.0.2.1")
	own6 := netip.MustParseAddr("2001:db8::1")
	group := netip.MustParseAddr("239.1.2.3")
	la := &localAddrs{}
	la.cur.Store(&addrSet{
		exact:     map[netip.Addr]struct{}{own: {}, own6: {}, netip.MustParseAddr("127.0.0.1"): {}, netip.IPv6Loopback(): {}},
		prefixes:  []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		loopbacks: []int{lo},
		groups:    map[membership]struct{}{{group, eth}: {}},
	})
	la.refresh = func() bool { return false }
	la.refreshGroups = la.refresh
	la.mcast4 = true // a socket of family AF_INET
	h := &handler[struct{}]{local: la}

	cases := []struct {
		src, dst string
		ifIndex  int
		want     bool
	}{
		{"198.51.100.1", "192.0.2.1", eth, true},
		{"198.51.100.2", "192.0.2.1", eth, true},
		{"192.0.2.1", "192.0.2.1", eth, false}, // its own address, from the wire
		{"127.0.0.9", "192.0.2.1", eth, false}, // loopback, from the wire
		{"198.51.100.3", "192.0.2.1", eth, true},
		{"198.51.100.3", "192.0.2.99", eth, false}, // not this host's
		{"192.0.2.1", "192.0.2.1", lo, true},       // on loopback, anything goes
		{"127.0.0.9", "127.0.0.1", lo, true},
		{"127.0.0.10", "127.0.0.1", eth, false},
		{"2001:db8::99", "2001:db8::1", eth, true},
		{"::1", "2001:db8::1", eth, false},
		{"2001:db8::98", "2001:db8::1", eth, true},
		{"198.51.100.1", "239.1.2.3", eth, true},
		{"198.51.100.2", "239.1.2.3", eth, true},
		{"198.51.100.2", "239.1.2.3", lo, false}, // not a member there
	}
	for _, c := range cases {
		// Each case twice: from the cache too.
		for range 2 {
			if got := h.isLocal(netip.MustParseAddr(c.src), netip.MustParseAddr(c.dst), c.ifIndex); got != c.want {
				t.Errorf("%s -> %s on %d: local %v, want %v", c.src, c.dst, c.ifIndex, got, c.want)
			}
		}
	}

	// A server's many clients cost no allocation, on and off loopback.
	srcs := make([]netip.Addr, 1000)
	for i := range srcs {
		srcs[i] = netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
	}
	for _, ifIndex := range []int{lo, eth} {
		i := 0
		allocs := testing.AllocsPerRun(1000, func() {
			if !h.isLocal(srcs[i%len(srcs)], own, ifIndex) {
				t.Fatal("a client's datagram judged not local")
			}
			i++
		})
		if allocs != 0 {
			t.Errorf("on %d: %v allocations per datagram", ifIndex, allocs)
		}
	}
}
