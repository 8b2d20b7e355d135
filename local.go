package udpstream

import (
	"net/netip"
	"sync/atomic"
)

// addrSet is one snapshot of the host's addresses. It is immutable once
// published.
type addrSet struct {
	// exact holds unicast and broadcast addresses.
	exact map[netip.Addr]struct{}
	// prefixes holds the prefixes of host-scope addresses: Linux treats a
	// whole loopback prefix such as 127.0.0.0/8 as local.
	prefixes []netip.Prefix
}

func (s *addrSet) has(a netip.Addr) bool {
	if s == nil {
		return false
	}
	if _, ok := s.exact[a]; ok {
		return true
	}
	for _, p := range s.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// limitedBroadcast is 255.255.255.255, local on every host.
var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// localAddrs answers whether an address belongs to this host, following
// address changes.
type localAddrs struct {
	cur atomic.Pointer[addrSet]
	// refresh, when set, applies pending address changes and reports
	// whether it did. contains calls it on a miss, so that a datagram to
	// an address added a moment ago is not judged by a stale set.
	refresh func() bool
}

// lookup reports whether a datagram to a would be delivered locally, and
// the address set that said so.
func (l *localAddrs) lookup(a netip.Addr) (*addrSet, bool) {
	set := l.cur.Load()
	if a == limitedBroadcast || set.has(a) {
		return set, true
	}
	if l.refresh != nil && l.refresh() {
		set = l.cur.Load()
		return set, set.has(a)
	}
	return set, false
}
