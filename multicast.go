package udpstream

import (
	"net/netip"
	"slices"
)

// groupJoin is one join an option asked for: any source when source is
// the zero Addr.
type groupJoin struct {
	group, source netip.Addr
}

// WithJoin joins the multicast groups, IPv4 or IPv6, on the stream's UDP
// socket, as a program joins them on its own socket: on the interface of
// WithInterface, or else on every interface that is up and multicast
// capable, and on those that later come up. Datagrams to a joined group
// are then delivered, with Header.Dst the group, from any source.
//
// A stream on both families delivers the IPv4 groups it joined, though a
// dual-stack socket receives no IPv4 multicast it did not ask for (see
// WithAnyDestination). IPv4 groups need a stream with IPv4
// (WithNetwork "udp" or "udp4"), IPv6 groups one with IPv6.
//
// In monitor mode, which has no socket on the port, the memberships are
// held by a UDP socket of the stream's bound to no port, which receives
// nothing. The memberships end with the stream, whose socket closes.
// Addresses that are not multicast groups are an error. A failed join on
// the WithInterface interface fails Open; elsewhere the interface is
// skipped, as one going away.
//
// Datagrams to a group that a program on this host sends, the stream's
// own included, are not seen: the kernel loops them back to sockets, but
// never hands them to packet sockets (tpacket_rcv drops PACKET_LOOPBACK).
//
// A reply to a datagram sent to a group is sent by unicast from an address
// of the interface it came in on. Stream.Send sends to a group: an IPv6
// one given the interface as zone (ff02::fb%eth0), an IPv4 one by the
// interface of from; its TTL is SendOptions.TTL, or the kernel's default
// for multicast, 1.
func WithJoin(groups ...netip.Addr) Option {
	return Option{func(c *config) error {
		for _, g := range groups {
			if !g.Unmap().IsMulticast() {
				return optionErr("join %v: not a multicast group", g)
			}
			c.joins = append(c.joins, groupJoin{group: g.Unmap().WithZone("")})
		}
		return nil
	}}
}

// WithJoinSource joins group for datagrams from source only (a
// source-specific join, RFC 4607), as WithJoin does otherwise. It may be
// given several times for several sources of a group. Since the packet
// sockets see every source, the stream itself drops datagrams to a group
// it joined only this way from other sources, as the kernel does for the
// socket, and counts them in Stats.NotLocal. A WithJoin of the same group
// takes every source.
func WithJoinSource(group, source netip.Addr) Option {
	return Option{func(c *config) error {
		group, source = group.Unmap().WithZone(""), source.Unmap().WithZone("")
		switch {
		case !group.IsMulticast():
			return optionErr("join %v from %v: not a multicast group", group, source)
		case !source.IsValid() || source.IsUnspecified() || source.IsMulticast():
			return optionErr("join %v from %v: not a unicast source", group, source)
		case source.Is4() != group.Is4():
			return optionErr("join %v from %v: the group and the source are of different families", group, source)
		}
		c.joins = append(c.joins, groupJoin{group: group, source: source})
		return nil
	}}
}

// WithMulticastLoopback sets whether datagrams the stream sends to a
// multicast group are looped back to this host's own members of the
// group (IP_MULTICAST_LOOP, IPV6_MULTICAST_LOOP), the stream included
// when it joined the group. The kernel's default, without this option,
// is on. It is a property of the socket, not of one datagram: the kernel
// takes no control message for it.
func WithMulticastLoopback(on bool) Option {
	return Option{func(c *config) error {
		c.mcastLoop = &on
		return nil
	}}
}

// checkJoins refuses groups of a family the stream does not receive,
// which no option order can make right.
func (c *config) checkJoins() error {
	for _, j := range c.joins {
		if j.group.Is4() && c.network == "udp6" {
			return optionErr("join %v: an IPv4 group on a stream of WithNetwork(\"udp6\")", j.group)
		}
		if j.group.Is6() && c.network == "udp4" {
			return optionErr("join %v: an IPv6 group on a stream of WithNetwork(\"udp4\")", j.group)
		}
	}
	return nil
}

// joinSet is the stream's own memberships at one moment: the groups, the
// sources of each, and the interfaces joined. It is immutable once
// published.
type joinSet struct {
	groups map[netip.Addr]*joinedGroup
}

// joinedGroup is one group the stream joined.
type joinedGroup struct {
	anySource bool
	sources   []netip.Addr // with anySource false
	ifaces    []int        // where the join succeeded
}

// newJoinSet gathers the joins the options asked for, by group.
func newJoinSet(joins []groupJoin) *joinSet {
	s := &joinSet{groups: map[netip.Addr]*joinedGroup{}}
	for _, j := range joins {
		g := s.groups[j.group]
		if g == nil {
			g = &joinedGroup{}
			s.groups[j.group] = g
		}
		switch {
		case !j.source.IsValid():
			g.anySource, g.sources = true, nil
		case !g.anySource && !slices.Contains(g.sources, j.source):
			g.sources = append(g.sources, j.source)
		}
	}
	return s
}

// withIface returns a copy of s in which group g is joined on ifIndex too.
func (s *joinSet) withIface(g netip.Addr, ifIndex int) *joinSet {
	c := &joinSet{groups: make(map[netip.Addr]*joinedGroup, len(s.groups))}
	for a, jg := range s.groups {
		if a == g && !slices.Contains(jg.ifaces, ifIndex) {
			n := *jg
			n.ifaces = append(slices.Clip(jg.ifaces), ifIndex)
			jg = &n
		}
		c.groups[a] = jg
	}
	return c
}

// withoutIface returns a copy of s in which group g is not joined on
// ifIndex.
func (s *joinSet) withoutIface(g netip.Addr, ifIndex int) *joinSet {
	c := &joinSet{groups: make(map[netip.Addr]*joinedGroup, len(s.groups))}
	for a, jg := range s.groups {
		if a == g {
			n := *jg
			n.ifaces = slices.DeleteFunc(slices.Clone(jg.ifaces), func(i int) bool { return i == ifIndex })
			jg = &n
		}
		c.groups[a] = jg
	}
	return c
}

// decides reports whether the stream's own membership of group g decides
// for a datagram from src arriving on ifIndex, and if so whether the
// socket takes it. An IPv4 membership is per interface (ip_mc_sf_allow
// matches imr_ifindex); an IPv6 one is found by group alone
// (inet6_mc_check). The socket takes a joined group from any source, or
// from the sources of a source-specific join only.
func (s *joinSet) decides(g, src netip.Addr, ifIndex int) (decided, ok bool) {
	if s == nil {
		return false, false
	}
	jg := s.groups[g.WithZone("")]
	if jg == nil || g.Is4() && !slices.Contains(jg.ifaces, ifIndex) || len(jg.ifaces) == 0 {
		return false, false
	}
	return true, jg.anySource || slices.Contains(jg.sources, src.WithZone(""))
}
