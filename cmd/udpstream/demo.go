package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/udpstream/udpstream"
)

// envDemoNetns marks the demo re-executed in a user and network namespace
// of its own, where it has CAP_NET_RAW.
const envDemoNetns = "UDPSTREAM_DEMO_NETNS"

// demoTimeout bounds the wait for the demo's own datagrams, which travel
// over loopback and arrive within microseconds when all is well.
const demoTimeout = 5 * time.Second

// demoSend is one datagram the demo sends itself. TTL and TOS differ
// between them so that the output shows each header as it was sent.
type demoSend struct {
	network string
	addr    netip.Addr // the source, and the destination unless group is set
	group   netip.Addr // a multicast group the stream joined, to send to instead
	ttl     int
	tos     int // DSCP and ECN
}

// demoGroup is mDNS's IPv4 group, whose answers carry TTL 255. The demo
// joins it on loopback: a group datagram that a host sends over loopback
// arrives there as received traffic.
var demoGroup = netip.MustParseAddr("224.0.0.251")

var demoSends = []demoSend{
	{"udp4", netip.MustParseAddr("127.0.0.1"), netip.Addr{}, 42, 10<<2 | int(udpstream.ECT0)}, // AF11
	{"udp6", netip.MustParseAddr("::1"), netip.Addr{}, 7, 46 << 2},                            // EF
	{"udp4", netip.MustParseAddr("127.0.0.1"), demoGroup, 255, 0},
}

// dst is where d goes.
func (d demoSend) dst() netip.Addr {
	if d.group.IsValid() {
		return d.group
	}
	return d.addr
}

// payload is what d carries.
func (d demoSend) payload() string {
	if d.group.IsValid() {
		return "udpstream demo to the mDNS group"
	}
	if d.addr.Is6() {
		return "udpstream demo over IPv6"
	}
	return "udpstream demo over IPv4"
}

// runDemo listens on a free port, sends itself one datagram over each
// loopback address and one to the mDNS group over loopback, and prints
// them. Without CAP_NET_RAW it runs itself
// again in a user and network namespace, where it has it.
func runDemo(ctx context.Context, o options, args []string, stdout, stderr io.Writer) int {
	child := os.Getenv(envDemoNetns) != ""
	if child {
		// A new network namespace starts with loopback down.
		if err := loopbackUp(); err != nil {
			return fail(stderr, fmt.Errorf("demo: bringing up loopback in its own network namespace: %w", err))
		}
	}
	sends := demoSends
	s, err := udpstream.Open(ctx, 0, udpstream.Payload, udpstream.WithInterface("lo"), udpstream.WithJoin(demoGroup))
	if err != nil && ctx.Err() == nil && !errors.Is(err, os.ErrPermission) {
		// Perhaps a loopback that takes no group membership: the demo
		// shows the rest; any other failure comes back below.
		sends = demoSends[:2]
		s, err = udpstream.Open(ctx, 0, udpstream.Payload, udpstream.WithInterface("lo"))
	}
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return exitOK
		case errors.Is(err, os.ErrPermission) && !child:
			return demoInNamespace(ctx, args, stdout, stderr)
		case child:
			return fail(stderr, fmt.Errorf("demo, in a user and network namespace of its own: %w", err))
		}
		return fail(stderr, err)
	}
	defer s.Close()
	fmt.Fprintf(stderr, "udpstream: listening on port %d\n", s.Port())
	if child {
		fmt.Fprintln(stderr, "udpstream: demo runs in a user and network namespace of its own, for lack of CAP_NET_RAW on the host's")
	}

	dr := &demoRun{s: s, out: newPrinter(stdout, o.json), stderr: stderr}
	timeout := time.NewTimer(demoTimeout)
	defer timeout.Stop()
	dr.timeout = timeout.C
	// One at a time, so that the lines come in the same order every run.
	for _, d := range sends {
		if !dr.exchange(d) {
			break
		}
	}
	s.Close()
	if o.stats {
		printStats(stderr, s.Stats(), dr.delivered)
	}
	if err := s.Err(); err != nil {
		return fail(stderr, err)
	}
	return dr.code
}

// demoRun is the state of a demo: its stream and what it has printed.
type demoRun struct {
	s         *udpstream.Stream[[]byte]
	out       *printer
	stderr    io.Writer
	timeout   <-chan time.Time
	delivered uint64
	code      int
}

// exchange sends d and prints what arrives until d's datagram has. It
// returns false when the demo cannot go on: an error (dr.code says), a
// timeout, or the end of the stream.
func (dr *demoRun) exchange(d demoSend) bool {
	from, err := d.send(dr.s.Port())
	if err != nil {
		dr.code = fail(dr.stderr, err)
		return false
	}
	for {
		select {
		case p, ok := <-dr.s.Packets():
			if !ok {
				return false // interrupted, or failed: Stream.Err says
			}
			if p.Err != nil && p.Header.Version == 0 {
				continue
			}
			if err := dr.out.packet(p); err != nil {
				if !outputClosed(err) {
					dr.code = fail(dr.stderr, fmt.Errorf("writing output: %w", err))
				}
				return false
			}
			if p.Err == nil {
				dr.delivered++
				if p.Header.Src == from {
					return true
				}
			}
		case <-dr.timeout:
			dr.code = fail(dr.stderr, fmt.Errorf("demo: the datagram from %v did not arrive within %v: check that loopback is up and that no firewall drops UDP on it",
				from, demoTimeout))
			return false
		}
	}
}

// send sends the demo datagram from an ordinary UDP socket on the loopback
// address to port, and returns the address and port it came from.
func (d demoSend) send(port uint16) (netip.AddrPort, error) {
	c, err := net.ListenUDP(d.network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(d.addr, 0)))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("demo: no socket on %v (is loopback down, or IPv6 disabled?): %w", d.addr, err)
	}
	defer c.Close()
	if d.group.IsValid() {
		// Out of loopback, with the group TTL an mDNS answer carries.
		err = setMulticast(c, d.addr, d.ttl)
	} else {
		err = setHeaderFields(c, d.network, d.ttl, d.tos)
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("demo: setting TTL and TOS on %v: %w", d.addr, err)
	}
	if _, err := c.WriteToUDPAddrPort([]byte(d.payload()), netip.AddrPortFrom(d.dst(), port)); err != nil {
		return netip.AddrPort{}, fmt.Errorf("demo: sending to %v: %w", d.dst(), err)
	}
	from := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), nil
}
