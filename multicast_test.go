package udpstream

import (
	"context"
	"errors"
	"net/netip"
	"testing"
)

// TestJoinOptionErrors checks that joins Open cannot honour are refused
// as bad options, before any socket is opened.
func TestJoinOptionErrors(t *testing.T) {
	a := netip.MustParseAddr
	for name, opts := range map[string][]Option{
		"unicast group":        {WithJoin(a("192.0.2.1"))},
		"invalid group":        {WithJoin(netip.Addr{})},
		"unicast v6 group":     {WithJoin(a("2001:db8::1"))},
		"v4 group on udp6":     {WithNetwork("udp6"), WithJoin(a("239.1.1.1"))},
		"v4 group before udp6": {WithJoin(a("239.1.1.1")), WithNetwork("udp6")},
		"v6 group on udp4":     {WithNetwork("udp4"), WithJoin(a("ff05::1"))},
		"source not unicast":   {WithJoinSource(a("232.1.1.1"), a("239.0.0.1"))},
		"no source":            {WithJoinSource(a("232.1.1.1"), netip.Addr{})},
		"mixed families":       {WithJoinSource(a("232.1.1.1"), a("2001:db8::1"))},
		"source group unicast": {WithJoinSource(a("192.0.2.9"), a("192.0.2.1"))},
		"v6 source on udp4":    {WithNetwork("udp4"), WithJoinSource(a("ff35::1"), a("2001:db8::1"))},
	} {
		_, err := Open(context.Background(), 9, HeaderOnly, opts...)
		if !errors.Is(err, ErrOption) {
			t.Errorf("%s: Open returned %v, want an ErrOption", name, err)
		}
	}
}

// TestJoinSetDecides checks the socket's own verdict on a group it
// joined: per interface for IPv4, per group for IPv6, any source or the
// listed ones, and no verdict for groups it did not join.
func TestJoinSetDecides(t *testing.T) {
	a := netip.MustParseAddr
	g4, g6, ssm4, ssm6 := a("239.1.2.3"), a("ff05::db8:1"), a("232.1.1.1"), a("ff35::db8:1")
	s1, s2 := a("192.0.2.2"), a("192.0.2.3")
	s61, s62 := a("2001:db8::2"), a("2001:db8::3")
	set := newJoinSet([]groupJoin{
		{group: g4}, {group: g6},
		{group: ssm4, source: s2}, {group: ssm6, source: s62},
		// An any-source join of a group takes every source.
		{group: a("239.9.9.9"), source: s1}, {group: a("239.9.9.9")},
	})
	for _, g := range []netip.Addr{g4, g6, ssm4, ssm6, a("239.9.9.9")} {
		set = set.withIface(g, 2)
	}
	for _, c := range []struct {
		g, src      netip.Addr
		ifIndex     int
		decided, ok bool
	}{
		{g4, s1, 2, true, true},
		{g4, s1, 3, false, false}, // IPv4: not joined on interface 3
		{g6.WithZone("in0"), s61, 3, true, true},
		{ssm4, s2, 2, true, true},
		{ssm4, s1, 2, true, false},
		{ssm6, s62, 2, true, true},
		{ssm6, s61, 2, true, false},
		{a("239.9.9.9"), s2, 2, true, true},
		{a("239.5.5.5"), s1, 2, false, false},
		{a("ff05::5"), s61, 2, false, false},
	} {
		decided, ok := set.decides(c.g, c.src, c.ifIndex)
		if decided != c.decided || ok != c.ok {
			t.Errorf("%v from %v on %d: decided %v, takes %v; want %v, %v", c.g, c.src, c.ifIndex, decided, ok, c.decided, c.ok)
		}
	}
	set = set.withoutIface(g6, 2)
	if decided, _ := set.decides(g6, s61, 2); decided {
		t.Error("a group joined on no interface still decides")
	}
	var none *joinSet
	if decided, _ := none.decides(g4, s1, 2); decided {
		t.Error("a stream with no joins decides")
	}
}
