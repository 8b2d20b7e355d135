package udpstream

import "time"

// netRules are the settings of the stream's network namespace that change
// what the kernel delivers to a UDP socket, read when the stream opens
// (see readNetRules). Interfaces created later follow the namespace's
// defaults.
type netRules struct {
	def ifRules         // net.ipv{4,6}.conf.all combined with .default
	ifs map[int]ifRules // the same, combined with each interface's own

	// net.ipv6.max_hbh_opts_number and max_dst_opts_number: the most
	// non-padding options in one header; negative also refuses unknown
	// options.
	maxHBHOpts, maxDstOpts int
	// net.ipv6.max_hbh_opts_length and max_dst_opts_length: the longest
	// options header, in bytes.
	maxHBHLen, maxDstLen int

	// net.ipv4.ipfrag_time and net.ipv6.ip6frag_time.
	fragTime4, fragTime6 time.Duration

	// mip6 says the kernel is built with Mobile IPv6, which refuses a
	// type 2 routing header it did not process itself.
	mip6 bool
}

// ifRules are the per-interface settings, already combined with the
// namespace-wide ones the way the kernel combines them.
type ifRules struct {
	// net.ipv4.conf.*.accept_source_route: on only when both all and the
	// interface have it (IN_DEV_ANDCONF).
	sourceRoute4 bool
	// net.ipv4.conf.*.rp_filter: the larger of all and the interface's
	// (IN_DEV_MAXCONF).
	rpFilter int
	// net.ipv6.conf.*.seg6_enabled and rpl_seg_enabled: the smaller of
	// all and the interface's.
	seg6, rpl bool
	// net.ipv4.conf.*.accept_local: on when all or the interface has it
	// (IN_DEV_ORCONF); a source that is one of this host's addresses is
	// then accepted from the wire.
	acceptLocal bool
}

// defaultRules are Linux's defaults, for a stream whose namespace could
// not be read and for the pure tests.
var defaultRules = netRules{
	maxHBHOpts: 8, maxDstOpts: 8,
	maxHBHLen: 1 << 30, maxDstLen: 1 << 30,
	fragTime4: 30 * time.Second, fragTime6: 60 * time.Second,
	mip6: true,
}

// on returns the rules of interface ifIndex.
func (r *netRules) on(ifIndex int) ifRules {
	if r == nil {
		return ifRules{}
	}
	if i, ok := r.ifs[ifIndex]; ok {
		return i
	}
	return r.def
}

// fragTimeout returns the reassembly timeout of IP version v, or 0 (the
// reassembler's own) when there are no rules.
func (e *frameEnv) fragTimeout(v uint8) time.Duration {
	switch {
	case e.rules == nil:
		return 0
	case v == 6:
		return e.rules.fragTime6
	}
	return e.rules.fragTime4
}

// frameEnv is what classify needs to know beyond a frame's bytes: the
// namespace's rules and how the frame arrived. The receive loop sets it in
// parsed before each frame, and classify keeps it.
type frameEnv struct {
	rules   *netRules // nil: defaultRules
	ifIndex int
	pktType uint8 // PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST (linux/if_packet.h)
}

// Link-layer packet types (linux/if_packet.h).
const (
	pktHost      = 0
	pktBroadcast = 1
	pktMulticast = 2
)

func (e *frameEnv) netRules() *netRules {
	if e.rules == nil {
		return &defaultRules
	}
	return e.rules
}
