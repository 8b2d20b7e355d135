package udpstream

import "time"

// verdict is what classify decides about one frame: deliver it, hand it to
// reassembly, or drop it for a specific reason. Every drop reason is its own
// value because the stream counts each.
type verdict uint8

const (
	deliver  verdict = iota // a UDP datagram for the port
	fragment                // an IP fragment of a UDP datagram: reassemble

	dropNotIP  // not IPv4 or IPv6, or the other family's socket
	dropNotUDP // another transport protocol, or No Next Header
	dropOtherPort
	dropMalformedIPHeader  // truncated IP header, IHL < 5 or past the frame
	dropMalformedIPLength  // IPv4 total length or IPv6 payload length
	dropMalformedExtHeader // IPv6 extension-header chain
	dropMalformedFragment  // fragment offset, length or first-fragment rules
	dropMalformedUDPHeader // frame ends inside the UDP header
	dropMalformedUDPLength // UDP length field
	dropBadIPChecksum
	dropBadUDPChecksum
	dropZeroChecksum6 // UDP checksum 0 over IPv6 (RFC 8200, 8.1)
	dropBadOptions    // IPv4 options or IPv6 options the kernel refuses
	dropMartian       // a source address the kernel refuses
	dropUnsupported   // jumbogram, ESP, AH, routing header in transit, ...

	// Reasons decided by the stream rather than by the parser.
	dropNotLocal // destination is not an address of this host
	dropTooLong  // larger than the receive buffer could hold
	dropFragOverlap
	dropFragTimeout
	dropFragEvicted // reassembly limits: memory, per-source, fragment count
	dropFragECN     // fragments whose ECN codepoints do not combine
	dropKernel      // the kernel dropped it: receive ring full
	dropRejected    // kernel-verdict mode: the kernel did not deliver it

	numVerdicts
)

// classifyFlags modify classify.
type classifyFlags uint8

const (
	// flagChecksumVouched says the kernel has validated the UDP checksum or
	// that it is not yet computed (a locally generated or offloaded packet,
	// whose checksum field holds only the pseudo-header sum).
	flagChecksumVouched classifyFlags = 1 << iota
)

// maxExtHeaders bounds the IPv6 extension-header chain walked before UDP,
// so that its types fit in parsed without allocating. Real traffic
// carries one or two; Linux has no bound, and a longer chain is the one
// difference the README names.
const maxExtHeaders = 32

// parsed is the result of classify. Its slices are views into the frame.
type parsed struct {
	Header // Options is a view; ExtHeaders is nil (see ext)

	env frameEnv // set by the caller, kept by classify

	ext  [maxExtHeaders]uint8 // IPv6 extension headers before UDP, in order
	extN uint8

	ip  []byte // the IP datagram, link-layer padding trimmed
	l4  []byte // the IP payload after all headers
	udp []byte // UDP header and payload, trimmed to the UDP length

	frag fragInfo // valid when the verdict is fragment
}

// fragInfo is what reassembly needs from one fragment.
type fragInfo struct {
	id     uint32 // IPv4 ID (16 bits) or IPv6 fragment identification
	offset int    // byte offset of data in the original datagram
	more   bool   // more fragments follow
	// head is the part of the packet that precedes the fragmentable part:
	// the IPv4 header, or the IPv6 header and the extension headers before
	// the Fragment header. The first fragment's head becomes the
	// reassembled datagram's header.
	head []byte
	// nextHeader is the protocol of the fragmentable part (the Fragment
	// header's Next Header for IPv6; the protocol field for IPv4).
	nextHeader uint8
	data       []byte // the fragment's share of the fragmentable part; empty for an empty fragment
	ecn        uint8  // the fragment's ECN codepoint
	// timeout is the namespace's reassembly timeout for the family
	// (ipfrag_time, ip6frag_time); 0 for the reassembler's own.
	timeout time.Duration
	// arrival is the whole fragment as received, with its receive time
	// and interface, for a reassembler that keeps fragments: the caller
	// sets it, classify leaves it zero.
	arrival keptFragment
}

// classify parses one frame as an AF_PACKET datagram socket delivers it: it
// starts at the IP header and may carry link-layer padding after the IP
// datagram. want is the IP version the receiving socket is bound to (4 or
// 6); port is the listened port. classify fills p and never allocates.
func classify(frame []byte, want uint8, port uint16, flags classifyFlags, p *parsed) verdict {
	env := p.env
	*p = parsed{env: env}
	if len(frame) == 0 {
		return dropNotIP
	}
	v := frame[0] >> 4
	if v != want {
		return dropNotIP
	}
	switch v {
	case 4:
		return parseIPv4(frame, port, flags, p)
	case 6:
		return parseIPv6(frame, port, flags, p)
	}
	return dropNotIP
}
