package udpstream

import (
	"errors"
	"fmt"
	"time"
)

// Defaults for the options.
const (
	// DefaultBufferSize is the kernel receive ring per address family: 8 MiB
	// holds 4,096 datagrams of up to 1,958 bytes each, several milliseconds
	// of a saturated loopback.
	DefaultBufferSize = 8 << 20

	// DefaultChannelCapacity is the capacity of the Packet channel.
	DefaultChannelCapacity = 256

	// DefaultReassemblyTimeout is how long a fragmented datagram may take
	// to arrive whole, counted from its first fragment, where the
	// namespace's ipfrag_time (IPv4) and ip6frag_time (IPv6) cannot be
	// read; on Linux the stream follows those.
	DefaultReassemblyTimeout = 30 * time.Second

	// DefaultReassemblyMemory caps the bytes held by datagrams being
	// reassembled (as Linux's ipfrag_high_thresh).
	DefaultReassemblyMemory = 4 << 20

	// DefaultMaxFragments bounds the fragments of one datagram.
	DefaultMaxFragments = 64

	// DefaultMaxPerSource bounds the datagrams one source may have in
	// reassembly at once.
	DefaultMaxPerSource = 64

	minBufferSize = 128 << 10
	maxBufferSize = 1 << 30
)

// config is what the options set.
type config struct {
	ifName         string
	ifIndex        int
	network        string // "udp", "udp4" or "udp6"
	bufferSize     int
	chanCap        int
	portErrors     bool
	dropErrors     bool
	fragments      bool // WithFragments
	monitor        bool
	anyDestination bool
	fanout         int
	send           SendOptions
	mode           Mode
	joins          []groupJoin // WithJoin, WithJoinSource
	mcastLoop      *bool       // WithMulticastLoopback; nil keeps the kernel's

	reasmTimeout    time.Duration
	reasmTimeoutSet bool // by WithReassembly, over the namespace's ipfrag_time and ip6frag_time
	reasmMemory     int
	reasmFragments  int
	reasmPerSource  int
}

func defaultConfig() config {
	return config{
		network:        "udp",
		bufferSize:     DefaultBufferSize,
		chanCap:        DefaultChannelCapacity,
		fanout:         1,
		reasmTimeout:   DefaultReassemblyTimeout,
		reasmMemory:    DefaultReassemblyMemory,
		reasmFragments: DefaultMaxFragments,
		reasmPerSource: DefaultMaxPerSource,
	}
}

// An Option configures Listen and Open. Options are applied in order; a
// bad value makes Listen return an error that names it.
type Option struct {
	apply func(*config) error
}

// ErrOption is wrapped by the errors Listen and Open return for a bad
// option value, and by sending with bad SendOptions.
var ErrOption = errors.New("udpstream: invalid option")

func optionErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrOption}, args...)...)
}

// WithInterface receives only datagrams that arrive on the named interface
// (and reserves the port only there). By default every interface is used.
func WithInterface(name string) Option {
	return Option{func(c *config) error {
		if name == "" {
			return optionErr("empty interface name")
		}
		c.ifName, c.ifIndex = name, 0
		return nil
	}}
}

// WithInterfaceIndex is WithInterface by interface index.
func WithInterfaceIndex(index int) Option {
	return Option{func(c *config) error {
		if index <= 0 {
			return optionErr("interface index %d: must be positive", index)
		}
		c.ifName, c.ifIndex = "", index
		return nil
	}}
}

// WithNetwork selects the address families: "udp" (both, the default),
// "udp4" (IPv4 only) or "udp6" (IPv6 only).
func WithNetwork(network string) Option {
	return Option{func(c *config) error {
		switch network {
		case "udp", "udp4", "udp6":
			c.network = network
			return nil
		}
		return optionErr("network %q: want udp, udp4 or udp6", network)
	}}
}

// WithBufferSize sets the kernel receive ring of each address family, in
// bytes (default DefaultBufferSize, at least 128 KiB). When the consumer
// falls behind, the ring absorbs bursts; when it is full, the kernel drops
// datagrams and Stats.KernelDrops counts them. In socket mode it is the
// receive buffer (SO_RCVBUF) of the UDP socket, which the kernel caps at
// net.core.rmem_max unless the process has CAP_NET_ADMIN.
func WithBufferSize(bytes int) Option {
	return Option{func(c *config) error {
		if bytes < minBufferSize || bytes > maxBufferSize {
			return optionErr("buffer size %d: want %d to %d bytes", bytes, minBufferSize, maxBufferSize)
		}
		c.bufferSize = bytes
		return nil
	}}
}

// WithChannelCapacity sets the capacity of the Packet channel (default
// DefaultChannelCapacity; 0 makes it unbuffered).
func WithChannelCapacity(n int) Option {
	return Option{func(c *config) error {
		if n < 0 {
			return optionErr("channel capacity %d: must not be negative", n)
		}
		c.chanCap = n
		return nil
	}}
}

// WithPortErrors makes well-formed UDP datagrams to other ports reach the
// channel as Packets whose Err wraps ErrNotDestPort, with their Header
// filled. By default they are dropped in the kernel and never seen.
func WithPortErrors() Option {
	return Option{func(c *config) error {
		c.portErrors = true
		return nil
	}}
}

// WithDropErrors makes datagrams that are dropped for being malformed, for
// a bad checksum or for being too long for the receive buffer reach the
// channel as Packets whose Err wraps ErrMalformed, ErrChecksum or
// ErrBufsizeTooShort, with the Header filled as far as the parse got (a
// truncated header leaves the rest zero) and Value zero: the decoder does
// not see them. They are still counted among the drops in Stats, not as
// delivered. Security and measurement tools use it to see malformed
// traffic; by default it is only counted.
func WithDropErrors() Option {
	return Option{func(c *config) error {
		c.dropErrors = true
		return nil
	}}
}

// WithMonitor observes a port without reserving it, so that another
// process may own it. Without a reservation nothing stops the kernel from
// answering ICMP port unreachable when no process owns the port, and
// sending (Packet.Reply) is unavailable. Port 0 is refused in monitor mode.
func WithMonitor() Option {
	return Option{func(c *config) error {
		c.monitor = true
		return nil
	}}
}

// WithAnyDestination delivers datagrams whatever their destination
// address, including multicast groups the arrival interface is not in and
// addresses of other hosts (such as frames seen in promiscuous mode). By
// default only what the kernel would deliver to a socket bound to the
// unspecified address is: datagrams to a unicast or broadcast address of
// this host, and to multicast groups the arrival interface belongs to
// (IPv4 ones only with WithNetwork("udp4"), or joined with WithJoin: a
// dual-stack socket has IP_MULTICAST_ALL off).
func WithAnyDestination() Option {
	return Option{func(c *config) error {
		c.anyDestination = true
		return nil
	}}
}

// WithReassembly sets the limits of IP fragment reassembly: how long a
// datagram may take to arrive whole from its first fragment (default: the
// namespace's net.ipv4.ipfrag_time and net.ipv6.ip6frag_time, read at
// Open), the memory all datagrams in reassembly may
// hold (DefaultReassemblyMemory), the fragments one datagram may have
// (DefaultMaxFragments), and the datagrams one source may have in
// reassembly at once (DefaultMaxPerSource). A zero argument keeps its
// default. Datagrams over a limit are dropped and counted in Stats. In
// socket mode the kernel reassembles, under its own limits, and these do
// not apply.
func WithReassembly(timeout time.Duration, memory, maxFragments, maxPerSource int) Option {
	return Option{func(c *config) error {
		switch {
		case timeout < 0:
			return optionErr("reassembly timeout %v: must be positive", timeout)
		case memory != 0 && memory < 128<<10:
			// A largest datagram and its bookkeeping need about 67 KiB.
			return optionErr("reassembly memory %d: want at least 128 KiB", memory)
		case maxFragments != 0 && maxFragments < 2:
			return optionErr("reassembly fragments %d: want at least 2", maxFragments)
		case maxPerSource < 0:
			return optionErr("reassembly datagrams per source %d: want at least 1", maxPerSource)
		}
		if timeout != 0 {
			c.reasmTimeout, c.reasmTimeoutSet = timeout, true
		}
		if memory != 0 {
			c.reasmMemory = memory
		}
		if maxFragments != 0 {
			c.reasmFragments = maxFragments
		}
		if maxPerSource != 0 {
			c.reasmPerSource = maxPerSource
		}
		return nil
	}}
}

// WithFragments keeps each fragment of a fragmented datagram, as it was
// received, until the datagram is whole, so that its decoder can see them
// (Datagram.Fragments) and write a capture of the fragments as they came.
// The copies count against the reassembly memory of WithReassembly, where
// a datagram in reassembly then takes two to three times its size: a
// stream that keeps fragments holds fewer datagrams in reassembly at
// once, and the largest datagram, 64 KiB in 1280-byte fragments, needs
// about 180 KiB of it. Without it no fragment is kept and Datagram.Fragments returns nil.
// It needs the ring: it is refused in ModeSocket, where the kernel
// reassembles and passes on only the datagram, and makes ModeAuto choose
// ModeRing.
func WithFragments() Option {
	return Option{func(c *config) error {
		c.fragments = true
		return nil
	}}
}

// WithFanout receives each address family through n packet sockets (1 to
// 16, default 1) in a PACKET_FANOUT group, each with a receive goroutine
// of its own, all feeding the one channel. The kernel spreads datagrams
// over the sockets by flow hash, so the datagrams of one flow keep their
// order. The buffer of WithBufferSize is shared among the n sockets of a
// family. It helps when decoding, not receiving, is the bottleneck and
// cores are free. In socket mode the stream binds n UDP sockets to the
// port with SO_REUSEPORT, which the kernel spreads datagrams over by flow
// hash, and shares the buffer among them likewise.
func WithFanout(n int) Option {
	return Option{func(c *config) error {
		if n < 1 || n > 16 {
			return optionErr("fanout %d: want 1 to 16 sockets per family", n)
		}
		c.fanout = n
		return nil
	}}
}

func (c *config) families() []uint8 {
	switch c.network {
	case "udp4":
		return []uint8{4}
	case "udp6":
		return []uint8{6}
	}
	return []uint8{4, 6}
}
