package udpstream

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Errors of the stream's datagrams, compared with errors.Is. Packet.Err
// carries ErrNotDestPort (with WithPortErrors), ErrBufsizeTooShort,
// ErrMalformed and ErrChecksum (with WithDropErrors), and a
// *DecoderPanicError, which matches ErrDecoderPanic. Without those
// options, datagrams of those kinds are dropped and counted in Stats.
var (
	// ErrNotDestPort marks a well-formed UDP datagram addressed to a port
	// other than the listened one. It reaches the channel only with
	// WithPortErrors.
	ErrNotDestPort = errors.New("udpstream: datagram not for the listened port")

	// ErrBufsizeTooShort marks a datagram larger than the receive buffer
	// could hold (Stats.TooLong). It reaches the channel only with
	// WithDropErrors.
	ErrBufsizeTooShort = errors.New("udpstream: datagram larger than the receive buffer")

	// ErrMalformed marks a packet whose IP or UDP header is inconsistent
	// (Stats.Malformed); the error's text names what was wrong. It
	// reaches the channel only with WithDropErrors.
	ErrMalformed = errors.New("udpstream: malformed packet")

	// ErrChecksum marks a packet whose IPv4 header or UDP checksum is wrong,
	// or an IPv6 UDP datagram with a zero checksum (Stats.BadIPChecksum,
	// BadUDPChecksum, ZeroUDPChecksum). It reaches the channel only with
	// WithDropErrors.
	ErrChecksum = errors.New("udpstream: bad checksum")

	// ErrDecoderPanic is matched by the *DecoderPanicError of a datagram
	// whose decoder panicked.
	ErrDecoderPanic = errors.New("udpstream: decoder panicked")
)

// DecoderPanicError is the Packet.Err of a datagram whose decoder
// panicked. The panic is recovered and the stream goes on. Its Error is
// one line; the stack is in Stack, for errors.As:
//
//	var pe *udpstream.DecoderPanicError
//	if errors.As(p.Err, &pe) {
//		log.Printf("%v\n%s", pe, pe.Stack)
//	}
type DecoderPanicError struct {
	// Value is what the decoder passed to panic.
	Value any
	// Stack is the decoder's goroutine stack at the panic, as
	// runtime/debug.Stack formats it.
	Stack []byte
}

// Error returns one line: ErrDecoderPanic's text and the panic value.
func (e *DecoderPanicError) Error() string {
	return fmt.Sprintf("%v: %v", ErrDecoderPanic, e.Value)
}

// Unwrap returns ErrDecoderPanic and, when the panic value is an error
// (such as a runtime.Error), that error.
func (e *DecoderPanicError) Unwrap() []error {
	if err, ok := e.Value.(error); ok {
		return []error{ErrDecoderPanic, err}
	}
	return []error{ErrDecoderPanic}
}

// ECN is the Explicit Congestion Notification codepoint of an IP header
// (RFC 3168): the two low bits of the IPv4 TOS or IPv6 traffic class.
type ECN uint8

// ECN codepoints.
const (
	NotECT ECN = 0 // not ECN-capable transport
	ECT1   ECN = 1 // ECN-capable transport, ECT(1)
	ECT0   ECN = 2 // ECN-capable transport, ECT(0)
	CE     ECN = 3 // congestion experienced
)

// String returns the RFC 3168 name of e.
func (e ECN) String() string {
	switch e & 3 {
	case ECT1:
		return "ECT(1)"
	case ECT0:
		return "ECT(0)"
	case CE:
		return "CE"
	}
	return "Not-ECT"
}

// Header is the IP and UDP header of a received datagram. It is a plain
// value owned by its Packet: the slices in it are never shared with the
// library or the kernel, and their capacity is their length.
//
// In ring mode every field is known. In socket mode the fields the socket
// cannot see are listed in Unknown and left zero (see HeaderFields): a
// zero there is not what the datagram carried.
type Header struct {
	// Version is the IP version, 4 or 6.
	Version uint8

	// Src and Dst are the IP addresses and UDP ports. IPv4 addresses are
	// 4-byte addresses, never IPv4-mapped IPv6 addresses. An IPv6
	// link-local address (fe80::/10, or a link-local multicast group as
	// Dst) carries the name of the interface the datagram arrived on as
	// its zone, as in fe80::1%eth0, since it means something only on that
	// link; no other address has a zone.
	Src, Dst netip.AddrPort

	// TTL is the IPv4 time to live or the IPv6 hop limit, as it arrived.
	TTL uint8

	// TOS is the IPv4 type of service or the IPv6 traffic class byte:
	// DSCP in the high six bits, ECN in the low two. See DSCP and ECN.
	TOS uint8

	// ID is the IPv4 identification field, or the IPv6 fragment
	// identification when the datagram carried a Fragment header (0
	// otherwise). Unknown in socket mode (FieldID), except for an IPv6
	// datagram that was not fragmented, whose ID is 0.
	ID uint32

	// DF and MF are the IPv4 Don't Fragment and More Fragments flags. MF
	// is set on a reassembled datagram, as in its first fragment. Both are
	// false for IPv6. In socket mode DF is unknown for IPv4 (FieldDF);
	// MF is known, since the socket tells a reassembled datagram.
	DF, MF bool

	// FlowLabel is the 20-bit IPv6 flow label; 0 for IPv4.
	FlowLabel uint32

	// Options holds the IPv4 options byte for byte (the header past its
	// first 20 bytes); nil when there are none and for IPv6.
	Options []byte

	// ExtHeaders lists the IPv6 extension headers before UDP by their
	// Next Header numbers (0 Hop-by-Hop, 43 Routing, 44 Fragment, 60
	// Destination Options), in order; nil when there are none and for
	// IPv4. In socket mode those of a fragmented datagram lack the
	// Fragment header (FieldExtHeaders).
	ExtHeaders []uint8

	// Fragments is the number of IP fragments the datagram arrived in; 1
	// when it was not fragmented. In socket mode the count of a
	// fragmented datagram is unknown (FieldFragments): Fragments is then
	// a lower bound, at least 2, from the size of its largest fragment.
	Fragments int

	// UDPLength and UDPChecksum are the UDP header's length and checksum
	// fields as received. UDPLength includes the 8-byte UDP header. For a
	// datagram whose checksum the kernel left to be computed by hardware
	// or not at all (one sent by this host, such as over loopback),
	// UDPChecksum holds only the partial pseudo-header sum the sender's
	// kernel put there. In socket mode UDPLength is 8 plus the payload's
	// length, and UDPChecksum is unknown (FieldUDPChecksum): the kernel
	// checked it.
	UDPLength   uint16
	UDPChecksum uint16

	// IfIndex is the index of the interface the datagram arrived on.
	IfIndex int

	// Time is when the kernel received the datagram (its last fragment,
	// when fragmented).
	Time time.Time

	// Unknown lists the fields this stream's mode cannot see; it is zero,
	// every field known, in ring mode. See Known.
	Unknown HeaderFields
}

// DSCP returns the Differentiated Services codepoint, the high six bits
// of TOS.
func (h Header) DSCP() uint8 { return h.TOS >> 2 }

// ECN returns the ECN codepoint, the low two bits of TOS.
func (h Header) ECN() ECN { return ECN(h.TOS & 3) }

// Datagram is the view of one received datagram that a Decoder sees. Its
// byte slices may point into kernel ring memory and are valid only during
// the Decoder call: a decoder must copy what it keeps. Each slice's
// capacity is its length, so that appending to one copies it and slicing
// past its end panics (a panic the stream recovers, see Decoder) rather
// than reading or overwriting the bytes of other datagrams.
//
// In socket mode no header bytes are received: IP and UDP return nil,
// and Payload returns the payload; the Header is what the socket's
// control messages told.
type Datagram struct {
	hdr     *Header
	ip      []byte
	udp     []byte
	payload []byte
	frags   []Fragment
	slab    *slab // where Payload and Raw copy to; nil: allocate each
}

// Header returns the datagram's parsed header, a copy owned by the caller.
func (d *Datagram) Header() Header { return *d.hdr }

// IP returns the whole IP datagram, headers included, reassembled when it
// arrived in fragments; nil in socket mode. Valid only during the Decoder
// call.
func (d *Datagram) IP() []byte { return d.ip[:len(d.ip):len(d.ip)] }

// UDP returns the UDP header and payload; nil in socket mode. Valid only
// during the Decoder call.
func (d *Datagram) UDP() []byte { return d.udp[:len(d.udp):len(d.udp)] }

// Payload returns the UDP payload. Valid only during the Decoder call.
func (d *Datagram) Payload() []byte { return d.payload[:len(d.payload):len(d.payload)] }

// Fragments returns the IP fragments a reassembled datagram arrived in,
// each as it was received, in the order the stream received them, on a
// stream opened WithFragments; nil for a datagram that was not
// fragmented (an IPv6 atomic fragment included) and without
// WithFragments. They are the fragments whose data the datagram holds, as
// many as Header.Fragments: an exact duplicate of one is not among them.
// The slice and the fragments' IP bytes are valid only during the Decoder
// call; the capacity of each is its length.
func (d *Datagram) Fragments() []Fragment { return d.frags[:len(d.frags):len(d.frags)] }

// Fragment is one IP fragment of a reassembled datagram, as it was
// received: see Datagram.Fragments.
type Fragment struct {
	// IP is the fragment from its IP header on, as it arrived (link-layer
	// padding trimmed): its own header, TTL, TOS and flags, and its share
	// of the datagram. Valid only during the Decoder call.
	IP []byte

	// IfIndex is the index of the interface the fragment arrived on.
	IfIndex int

	// Time is when the kernel received the fragment. The last one's is
	// the datagram's Header.Time.
	Time time.Time
}

// A Decoder turns one received datagram into a value of the user's type T.
// It runs on the stream's receive goroutine, one datagram at a time, so it
// should be quick; the Datagram is valid only during the call. An error it
// returns reaches the channel as Packet.Err, with the Header filled and
// Value as the decoder returned it. A panic in a decoder is recovered and
// reaches the channel as a *DecoderPanicError, with the Header filled and
// Value zero; the stream goes on.
type Decoder[T any] func(d *Datagram) (T, error)

// Payload is a Decoder that returns a copy of the UDP payload. The copy
// is the caller's for as long as it holds it, and its capacity is its
// length: appending to it reallocates it, never reaching another
// datagram's copy.
//
// A copy of up to 512 bytes is cut from an 8 KiB slab that the receive
// goroutine fills with the small copies it makes, one allocation for many;
// the garbage collector frees a slab once none of its copies is
// reachable, so a small payload held for long keeps up to 8 KiB alive: a
// program that keeps a few small payloads of many, the last one of each
// source say, should keep copies of them (bytes.Clone). A larger payload
// gets an allocation of its own, its size rounded up to the allocator's
// size class. At hundreds of
// thousands of large datagrams a second the garbage collection of the
// copies costs more than the receiving; PayloadBuffer reuses memory
// instead.
func Payload(d *Datagram) ([]byte, error) {
	return d.clone(d.Payload()), nil
}

// Raw is a Decoder that returns a copy of the whole IP datagram, headers
// included; nil in socket mode, which receives no header bytes. Its
// copies are made, bounded and kept alive as Payload's are: up to 512
// bytes from an 8 KiB slab that a held copy keeps alive, larger ones in
// an allocation of their own.
func Raw(d *Datagram) ([]byte, error) {
	return d.clone(d.IP()), nil
}

// clone copies b for a built-in decoder, from the receive goroutine's
// slab.
func (d *Datagram) clone(b []byte) []byte { return d.slab.clone(b) }

// HeaderOnly is a Decoder for callers that need only Packet.Header. It
// copies nothing.
func HeaderOnly(*Datagram) (struct{}, error) {
	return struct{}{}, nil
}

// Packet is one item of a stream: a decoded datagram, or an error.
type Packet[T any] struct {
	// Value is what the decoder returned.
	Value T

	// Header is the datagram's parsed IP and UDP header.
	Header Header

	// Err is nil for a delivered datagram. It is set for a decoder error
	// (with Header filled), for a datagram to another port when
	// WithPortErrors asks for those (ErrNotDestPort, with Header and Value
	// filled as for any datagram), and on the last item of a stream that
	// failed (Header zero), whose error Stream.Err also returns.
	Err error

	tx *sender // the stream's sending socket, for Reply
}
