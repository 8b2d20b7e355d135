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

	// ModeKernel, kernel-verdict mode, receives through the ring as
	// ModeRing does, with every header field, and lets the kernel decide
	// delivery: the UDP socket that reserves the port receives too, and a
	// ring datagram is delivered only once its twin, the same datagram,
	// reaches that socket. One the kernel does not deliver there (an
	// nftables or iptables rule dropped it, a sysctl refused it) is
	// dropped and counted in Stats.Rejected. Delivery then follows the
	// host's firewall and every rule of the kernel's, at the cost of
	// reading each datagram twice and of the wait for its twin (see the
	// README for the figures). A datagram waits for its twin until the
	// socket has been found empty, or a later datagram of its ring has
	// paired, 10 ms after it was taken, so a verdict the kernel gives later
	// than that (an nftables queue rule waiting on a program) counts as a
	// refusal. It needs CAP_NET_RAW and a socket of the stream's own:
	// WithMonitor and WithAnyDestination are refused.
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
		case ModeRing, ModeSocket, ModeAuto, ModeKernel:
			c.mode = m
			return nil
		}
		return optionErr("mode %v: want ModeRing, ModeKernel, ModeSocket or ModeAuto", m)
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

// kernelConflicts are the options kernel-verdict mode refuses, with why.
var kernelConflicts = map[string]string{
	"WithMonitor":        "a monitor has no socket of its own for the kernel to deliver to",
	"WithAnyDestination": "the kernel delivers only to this host's addresses",
}

// kernelConflict names the first option set in c that kernel-verdict mode
// refuses, or returns "".
func (c *config) kernelConflict() string {
	switch {
	case c.monitor:
		return "WithMonitor"
	case c.anyDestination:
		return "WithAnyDestination"
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
