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
