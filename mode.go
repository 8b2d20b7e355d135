package udpstream

import "strconv"

// Mode is the way a stream receives. Every mode has the same API; they
// differ in what they need and in what the Header can show.
type Mode uint8

// Modes.
const (
	// ModeRing, the default, receives through AF_PACKET sockets with a
	// kernel ring and decides delivery as the kernel would. It sees every
	// header field and needs CAP_NET_RAW.
	ModeRing Mode = iota

	// ModeSocket receives through the UDP socket that reserves the port,
	// with control messages for what the IP header carried. It needs no
	// privilege; the kernel decides delivery. The fields a socket cannot
	// see are marked in Header.Unknown, and Datagram.IP and UDP return
	// nil (see Datagram). WithMonitor, WithPortErrors, WithDropErrors,
	// WithAnyDestination and WithFragments, which only a packet socket can
	// honour, are refused in this mode.
	ModeSocket

	// ModeAuto is ModeRing when the process may open packet sockets and
	// ModeSocket otherwise. With an option only the ring honours
	// (WithMonitor, WithPortErrors, WithDropErrors, WithAnyDestination,
	// WithFragments) it is ModeRing. Stream.Mode tells which one runs.
	ModeAuto

	// ModeKernel is reserved for kernel-verdict mode (the ring's headers,
	// delivered only when the kernel delivers the same datagram to the
	// stream's UDP socket). Open refuses it until it is implemented.
	ModeKernel
)

// String returns the mode's name: "ring", "socket", "auto" or "kernel".
func (m Mode) String() string {
	switch m {
	case ModeRing:
		return "ring"
	case ModeSocket:
		return "socket"
	case ModeAuto:
		return "auto"
	case ModeKernel:
		return "kernel"
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}

// WithMode chooses how the stream receives (default ModeRing).
func WithMode(m Mode) Option {
	return Option{func(c *config) error {
		switch m {
		case ModeRing, ModeSocket, ModeAuto:
			c.mode = m
			return nil
		case ModeKernel:
			return optionErr("mode kernel: kernel-verdict mode is not available yet")
		}
		return optionErr("mode %v: want ModeRing, ModeSocket or ModeAuto", m)
	}}
}

// ringOnly names the first option set in c that only the ring honours,
// or returns "".
func (c *config) ringOnly() string {
	switch {
	case c.monitor:
		return "WithMonitor"
	case c.portErrors:
		return "WithPortErrors"
	case c.dropErrors:
		return "WithDropErrors"
	case c.anyDestination:
		return "WithAnyDestination"
	case c.fragments:
		return "WithFragments"
	}
	return ""
}

// HeaderFields is a set of Header fields, as in Header.Unknown.
type HeaderFields uint16

// Header fields that a mode may not see.
const (
	// FieldID: Header.ID. A socket sees neither the IPv4 identification
	// nor the IPv6 fragment identification.
	FieldID HeaderFields = 1 << iota
	// FieldDF: Header.DF, which a socket does not see for IPv4.
	FieldDF
	// FieldUDPChecksum: Header.UDPChecksum, which the kernel has checked
	// and does not pass on.
	FieldUDPChecksum
	// FieldFragments: Header.Fragments. In socket mode a fragmented
	// datagram shows as fragmented, but the count is unknown; Fragments
	// then holds a lower bound (1 for an IPv6 atomic fragment, which the
	// kernel reports as fragmented). It is unknown too when the kernel
	// had more control messages for a datagram than fit the buffer.
	FieldFragments
	// FieldExtHeaders: Header.ExtHeaders. In socket mode the list of a
	// fragmented IPv6 datagram lacks the Fragment header (44), whose
	// place in it is unknown.
	FieldExtHeaders
)

// Known reports whether every field of f is known.
func (h Header) Known(f HeaderFields) bool { return h.Unknown&f == 0 }
