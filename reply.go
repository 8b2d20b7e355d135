package udpstream

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// SendOptions set IP header fields of a datagram sent with ReplyWith or
// Stream.Send. A field left unset (the zero Field) takes the stream's
// default (WithSendOptions), and where that is unset too, the system's.
type SendOptions struct {
	// TTL is the IPv4 time to live or IPv6 hop limit, 1 to 255.
	TTL Field
	// TOS is the IPv4 type of service or IPv6 traffic class byte, DSCP and
	// ECN together, 0 to 255.
	TOS Field
}

// A Field is the value of an IP header field to send, or unset. The zero
// Field is unset; Value sets one, zero included:
//
//	p.ReplyWith(answer, udpstream.SendOptions{TTL: udpstream.Value(255), TOS: udpstream.Value(0)})
type Field struct {
	v   uint8
	set bool
}

// Value returns a Field set to v.
func Value(v uint8) Field { return Field{v: v, set: true} }

// Get returns the field's value and whether it is set.
func (f Field) Get() (v uint8, ok bool) { return f.v, f.set }

// String returns the value in decimal, or "unset".
func (f Field) String() string {
	if !f.set {
		return "unset"
	}
	return strconv.Itoa(int(f.v))
}

// ErrNoSender is returned when sending from a stream in monitor mode,
// which has no socket of its own to send from.
var ErrNoSender = errors.New("udpstream: monitor mode has no socket to send from")

func (o SendOptions) valid() error {
	if o.TTL.set && o.TTL.v == 0 {
		return optionErr("TTL 0: want 1 to 255, or unset for the default")
	}
	return nil
}

// merged fills o's unset fields from the defaults d.
func (o SendOptions) merged(d SendOptions) SendOptions {
	if !o.TTL.set {
		o.TTL = d.TTL
	}
	if !o.TOS.set {
		o.TOS = d.TOS
	}
	return o
}

// WithSendOptions sets the TTL / hop limit and TOS / traffic class of
// every datagram the stream sends (replies included), unless a call sets
// its own.
func WithSendOptions(o SendOptions) Option {
	return Option{func(c *config) error {
		if err := o.valid(); err != nil {
			return err
		}
		c.send = o
		return nil
	}}
}

// Reply sends payload to the datagram's source, from the exact address and
// port it was sent to, so that a client of a host with several addresses
// hears back from the one it used; a datagram sent to a broadcast address
// or a multicast group is answered by unicast from an address of the
// interface it came in on. It is safe to call from any goroutine,
// also after the packet was received. It returns ErrNoSender in monitor
// mode and an error wrapping net.ErrClosed once the stream has ended;
// errors from the kernel (such as syscall.EMSGSIZE) are wrapped and match
// with errors.Is.
func (p Packet[T]) Reply(payload []byte) error {
	return p.ReplyWith(payload, SendOptions{})
}

// ReplyWith is Reply with IP header fields set for this datagram.
func (p Packet[T]) ReplyWith(payload []byte, o SendOptions) error {
	if p.tx == nil {
		if p.Header.Version == 0 {
			return errors.New("udpstream: nothing to reply to: the packet carries no datagram")
		}
		return ErrNoSender
	}
	return p.tx.send(payload, p.Header.Dst.Addr(), p.Header.Src, p.Header.IfIndex, o)
}

// Send sends payload from the stream's port to dst. from chooses the
// source address (the zero Addr lets the kernel choose); an IPv6 link-local
// from or dst needs a zone naming the interface, and so does an IPv6
// multicast dst, which then leaves by that interface (see WithJoin and
// WithMulticastLoopback). Like Reply, it is safe for concurrent use and
// fails once the stream has ended.
func (s *Stream[T]) Send(payload []byte, from netip.Addr, dst netip.AddrPort, o SendOptions) error {
	if s.tx == nil {
		return ErrNoSender
	}
	ifIndex, err := zoneIndex(from, dst.Addr())
	if err != nil {
		return err
	}
	return s.tx.send(payload, from.WithZone(""), dst, ifIndex, o)
}

// zoneIndex returns the interface named by the zone of a or b (an index or
// a name), or 0 when neither has one.
func zoneIndex(a, b netip.Addr) (int, error) {
	zone := a.Zone()
	if zone == "" {
		zone = b.Zone()
	}
	if zone == "" {
		return 0, nil
	}
	if i, err := strconv.Atoi(zone); err == nil {
		return i, nil
	}
	ifi, err := net.InterfaceByName(zone)
	if err != nil {
		return 0, fmt.Errorf("udpstream: zone %q: %w", zone, err)
	}
	return ifi.Index, nil
}
