package udpstream

import (
	"net/netip"
	"slices"
	"sync/atomic"
	"time"
)

// addrSet is one snapshot of the host's addresses. It is immutable once
// published.
type addrSet struct {
	// exact holds unicast and broadcast addresses.
	exact map[netip.Addr]struct{}
	// prefixes holds the prefixes of host-scope addresses: Linux treats a
	// whole loopback prefix such as 127.0.0.0/8 as local.
	prefixes []netip.Prefix
	// loopbacks holds the indexes of the interfaces with host-scope
	// addresses: loopback addresses are local only on them.
	loopbacks []int
	// broadcasts holds the subnet broadcast addresses (also in exact).
	broadcasts []netip.Addr
	// groups holds the multicast groups each interface belongs to,
	// whoever joined them: the kernel itself (all-nodes, solicited-node,
	// all-hosts) or any socket of the namespace.
	groups map[membership]struct{}
	// linkLocal holds the IPv6 link-local addresses by interface: one is
	// local only on its own link (rt6_need_strict in ip6_route_input).
	linkLocal map[membership]struct{}
}

// membership is interface ifIndex's membership of a multicast group, or
// its holding of a link-local address.
type membership struct {
	group   netip.Addr
	ifIndex int
}

// member reports whether interface ifIndex belongs to group g.
func (s *addrSet) member(g netip.Addr, ifIndex int) bool {
	if s == nil {
		return false
	}
	_, ok := s.groups[membership{g, ifIndex}]
	return ok
}

// unicast reports whether a is a unicast address of this host, one a
// datagram can be sent from: not multicast, not a broadcast address.
func (l *localAddrs) unicast(a netip.Addr) bool {
	if !a.IsValid() || a.IsMulticast() || a == limitedBroadcast {
		return false
	}
	return l == nil || !slices.Contains(l.cur.Load().broadcastList(), a)
}

func (s *addrSet) broadcastList() []netip.Addr {
	if s == nil {
		return nil
	}
	return s.broadcasts
}

// ownSource4 reports whether the kernel refuses src as the source of an
// IPv4 datagram from the wire because of this host's addresses
// (fib_validate_source): an address of this host, and a subnet broadcast
// address when reverse-path filtering (rp_filter) is on, whose full
// lookup finds a broadcast route. Without it only addresses assigned to
// an interface are refused, unless accept_local lets them in.
func (s *addrSet) ownSource4(src netip.Addr, r ifRules) bool {
	if s == nil {
		return false
	}
	if slices.Contains(s.broadcasts, src) {
		return r.rpFilter != 0
	}
	return !r.acceptLocal && s.has(src)
}

// onLink reports whether the IPv6 link-local address a is interface
// ifIndex's own.
func (s *addrSet) onLink(a netip.Addr, ifIndex int) bool {
	if s == nil {
		return false
	}
	_, ok := s.linkLocal[membership{a, ifIndex}]
	return ok
}

// onLoopback reports whether interface ifIndex is a loopback interface.
func (s *addrSet) onLoopback(ifIndex int) bool {
	return s != nil && slices.Contains(s.loopbacks, ifIndex)
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
	// refresh, when set, applies pending address changes, and returns
	// once any change another goroutine was applying is stored. lookup
	// calls it on a miss, so that a datagram to an address added a
	// moment ago is not judged by a stale set.
	refresh func() bool
	// refreshGroups is refresh for a multicast miss; it dumps the groups
	// again even with nothing announced where the kernel announces no
	// membership changes (before Linux 6.13 for IPv6, 6.14 for IPv4).
	refreshGroups func() bool
	// mcast4 says IPv4 multicast reaches the socket the stream stands
	// for: one of family AF_INET, which has IP_MULTICAST_ALL on
	// (inet_create); an AF_INET6 socket has it off (inet6_create), so a
	// dual-stack socket that joined nothing gets no IPv4 multicast
	// (ip_mc_sf_allow).
	mcast4 bool
	// joins holds the stream's own memberships (WithJoin), nil when it
	// joined none.
	joins atomic.Pointer[joinSet]
	// lastRefresh is when lookup last called refresh (monotonic
	// nanoseconds since clockBase), so that a flood of datagrams to other
	// hosts' addresses costs at most one refresh per missRefreshEvery.
	lastRefresh atomic.Int64
}

// missRefreshEvery bounds how often misses refresh the address set. The
// watcher applies changes as they are announced; the refresh on a miss
// only closes the moment between an announcement and the watcher's
// wakeup.
const missRefreshEvery = 100 * time.Microsecond

// clockBase anchors the monotonic readings of lastRefresh.
var clockBase = time.Now()

// lookup reports whether a datagram to a would be delivered locally, and
// the address set that said so.
func (l *localAddrs) lookup(a netip.Addr) (*addrSet, bool) {
	set := l.cur.Load()
	if a == limitedBroadcast || set.has(a) {
		return set, true
	}
	if l.missed(l.refresh) {
		set = l.cur.Load()
		return set, set.has(a)
	}
	return set, false
}

// lookupGroup reports whether a datagram from src to multicast group g
// arriving on interface ifIndex would be delivered to a socket bound to
// the unspecified address that holds the stream's memberships, and the
// address set that said so. loopback says ifIndex is a loopback
// interface.
func (l *localAddrs) lookupGroup(src, g netip.Addr, ifIndex int, loopback bool) (*addrSet, bool) {
	set := l.cur.Load()
	// A group the socket joined is its own to take or refuse, whatever
	// IP_MULTICAST_ALL says; others follow that default.
	decided, ok := l.joins.Load().decides(g, src, ifIndex)
	if decided && !ok {
		return set, false
	}
	if g.Is4() && !l.mcast4 && !decided {
		return set, false
	}
	if g.Is6() {
		switch g.As16()[1] & 0xf {
		case 0:
			return set, false // reserved scope (RFC 4291, 2.7): ip6_rcv_core
		case 1:
			if !loopback {
				return set, false // interface-local from the wire (RFC 4291 errata 3480): ip6_rcv_core
			}
		}
	}
	// The arrival interface must belong to the group: ip_check_mc_rcu
	// (IPv4), ipv6_chk_mcast_addr from ip6_mc_input (IPv6). The socket
	// then takes it with IP_MULTICAST_ALL / IPV6_MULTICAST_ALL on
	// (ip_mc_sf_allow, inet6_mc_check).
	if set.member(g, ifIndex) {
		return set, true
	}
	if l.missed(l.refreshGroups) {
		set = l.cur.Load()
		return set, set.member(g, ifIndex)
	}
	return set, false
}

// missed calls refresh after a miss, at most once per missRefreshEvery
// across all callers, and reports whether the caller should look again.
func (l *localAddrs) missed(refresh func() bool) bool {
	if refresh == nil {
		return false
	}
	now := int64(time.Since(clockBase))
	if last := l.lastRefresh.Load(); (last == 0 || now-last >= int64(missRefreshEvery)) && l.lastRefresh.CompareAndSwap(last, now) {
		refresh()
	}
	// Look again even when refresh found nothing pending or did not
	// run: another goroutine may have stored a new set meanwhile.
	return true
}
