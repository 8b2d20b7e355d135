// Package udpstream receives the UDP datagrams addressed to one port, over
// IPv4 and IPv6 at once, together with their IP headers (TTL or hop limit,
// TOS or traffic class, ECN, IPv4 ID and flags, IPv6 flow label, options
// and extension headers), and hands them to the program as a typed
// channel:
//
//	pkts, err := udpstream.Listen(ctx, 53, udpstream.Payload)
//	if err != nil {
//		return err
//	}
//	for p := range pkts {
//		fmt.Println(p.Header.Src, p.Header.TTL, len(p.Value))
//	}
//
// On Linux it receives through AF_PACKET sockets with a kernel filter that
// passes only UDP for the port (and IP fragments, which it reassembles),
// through a memory-mapped ring. A UDP socket bound to the port reserves it,
// so the kernel does not answer ICMP port unreachable, and carries replies
// (Packet.Reply). It needs CAP_NET_RAW. The packet sockets see traffic
// before the host's firewall; kernel-verdict mode (WithMode(ModeKernel))
// delivers a datagram only once the kernel has delivered it to that UDP
// socket too, so that the firewall and every rule of the kernel's decide.
// Socket mode needs no privilege: it receives through that UDP socket
// alone, with the header fields its control messages carry. On other
// systems Listen returns an error wrapping errors.ErrUnsupported.
//
// What reaches the channel is what the kernel would hand a UDP socket bound
// to the unspecified address: well-formed datagrams to the port whose
// destination is an address of this host (or a multicast group its
// interface belongs to, by the kernel's rules for such a socket, or one
// the stream joined with WithJoin), with a valid checksum (or one the
// kernel vouched for), reassembled from fragments, and split out of the UDP
// GSO super-packets a sender on this host may pass over loopback or veth.
// Everything else is dropped and counted by reason in Stats.
//
// The receive goroutines hand datagrams over in batches, when the ring has
// no more ready or after 256, so the consumer is woken once per batch.
package udpstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"
)

// Listen receives the UDP datagrams addressed to port, decodes each with
// dec and sends it on the returned channel. Port 0 picks a free port (use
// Open to learn which). The channel is closed when ctx is done, or after a
// final Packet whose Err says why the stream failed. Setup errors (missing
// CAP_NET_RAW, port in use, bad options) are returned here.
func Listen[T any](ctx context.Context, port uint16, dec Decoder[T], opts ...Option) (<-chan Packet[T], error) {
	s, err := Open(ctx, port, dec, opts...)
	if err != nil {
		return nil, err
	}
	return s.Packets(), nil
}

// Stream is a running receiver, for what a bare channel cannot say: the
// port bound, counters, why it ended, and Close.
type Stream[T any] struct {
	ch     chan Packet[T]
	port   uint16
	mode   Mode
	cancel context.CancelFunc
	done   chan struct{} // closed after ch is closed and resources released
	err    error         // why it ended; valid once ended is set
	ended  atomic.Bool   // set before ch is closed

	abandoned atomic.Uint64 // datagrams left in reassembly at the end

	sys      *system
	tx       *sender // nil in monitor mode
	reasm    *reassembler
	handlers []*handler[T]
}

// Open is Listen with a handle. The stream runs until ctx is done, Close is
// called, or it fails; the channel is then closed once, after every
// goroutine of the stream has returned. Open fails with an error wrapping
// os.ErrPermission when the process lacks CAP_NET_RAW, or
// CAP_NET_BIND_SERVICE for a port below net.ipv4.ip_unprivileged_port_start
// (the error says how to grant them), and with one wrapping
// syscall.ENODEV when the interface of WithInterface does not exist. In
// socket mode (WithMode) it needs no CAP_NET_RAW.
func Open[T any](ctx context.Context, port uint16, dec Decoder[T], opts ...Option) (*Stream[T], error) {
	if dec == nil {
		return nil, optionErr("nil decoder")
	}
	cfg := defaultConfig()
	for _, o := range opts {
		if o.apply == nil {
			return nil, optionErr("zero Option")
		}
		if err := o.apply(&cfg); err != nil {
			return nil, err
		}
	}
	if err := cfg.checkJoins(); err != nil {
		return nil, err
	}
	if cfg.monitor && port == 0 {
		return nil, optionErr("monitor mode needs a port: there is nothing to pick a free one from")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	sys, err := openSystem(&cfg, port)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	s := &Stream[T]{
		ch:     make(chan Packet[T], cfg.chanCap),
		port:   sys.port,
		mode:   sys.mode,
		cancel: cancel,
		done:   make(chan struct{}),
		sys:    sys,
	}
	s.tx = sys.newSender(cfg.send)
	s.reasm = newReassembler(reassemblyConfig{
		timeout:       cfg.reasmTimeout,
		maxBytes:      cfg.reasmMemory,
		maxFragments:  cfg.reasmFragments,
		maxPerSource:  cfg.reasmPerSource,
		keepFragments: cfg.fragments,
	})
	for _, src := range sys.sources {
		h := &handler[T]{
			out:   s.ch,
			dec:   dec,
			fam:   src.family(),
			port:  sys.port,
			cfg:   &cfg,
			local: sys.local,
			reasm: s.reasm,
			tx:    s.tx,
		}
		if sys.verdict != nil {
			h.kv = newKernelVerdict[T](sys.verdict, h.fam)
		}
		s.handlers = append(s.handlers, h)
	}
	go s.run(sctx)
	return s, nil
}

// run supervises the receive goroutines and closes the channel, exactly
// once, after all of them have returned and the stream's sockets and rings
// are released: a program that restarts a stream on the same port as soon
// as the channel closes finds the port free.
func (s *Stream[T]) run(ctx context.Context) {
	err := s.sys.run(ctx, func(i int) func(context.Context) error {
		h := s.handlers[i]
		return func(gctx context.Context) error {
			return receive(gctx, s.sys.sources[i], h)
		}
	})
	if err != nil && ctx.Err() == nil {
		// Like a watch channel: the last item says why it ended. Give up
		// on it only if the caller is gone.
		select {
		case s.ch <- Packet[T]{Err: err}:
		case <-ctx.Done():
		}
	}
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = nil
	}
	s.sys.close()
	// Datagrams of which some fragments came are counted too.
	s.abandoned.Store(uint64(s.reasm.abandon()))
	s.err = err
	s.ended.Store(true)
	s.cancel()
	close(s.ch)
	close(s.done)
}

// Packets returns the stream's channel. It is closed when the stream ends,
// once every receive goroutine has returned.
func (s *Stream[T]) Packets() <-chan Packet[T] { return s.ch }

// Port returns the port the stream listens on: the one chosen by the
// kernel when Open was given port 0.
func (s *Stream[T]) Port() uint16 { return s.port }

// Mode returns the way the stream receives: ModeRing, ModeKernel or
// ModeSocket, ModeAuto's choice for ModeAuto.
func (s *Stream[T]) Mode() Mode { return s.mode }

// Err returns why the stream ended: nil while it runs and after it was
// ended by its context or by Close. It is valid as soon as the channel is
// closed.
func (s *Stream[T]) Err() error {
	if s.ended.Load() {
		return s.err
	}
	return nil
}

// Close ends the stream, as cancelling its context does, and waits until
// its sockets and ring memory are released and its channel is closed. Packets already in the
// channel stay readable. Close is idempotent and safe to call from any
// goroutine; it returns nil.
func (s *Stream[T]) Close() error {
	s.cancel()
	<-s.done
	return nil
}

// Done returns a channel that is closed when the stream has ended and
// released its resources.
func (s *Stream[T]) Done() <-chan struct{} { return s.done }

// Stats returns the stream's counters. It is safe to call at any time,
// during and after the stream.
func (s *Stream[T]) Stats() Stats {
	s.sys.pollKernelDrops()
	var st Stats
	for _, h := range s.handlers {
		h.counts.addTo(&st)
	}
	st.KernelDrops += s.sys.kernelDrops.Load()
	st.Abandoned += s.abandoned.Load()
	if v := s.sys.verdict; v != nil {
		st.SocketOnly = v.socketOnly.Load()
	}
	// Datagrams time out as later fragments arrive; a quiet stream learns
	// of them here.
	s.reasm.expire(time.Now())
	s.reasm.countDrops(&st)
	return st
}

// Stats counts what a stream has seen. Every unfragmented datagram that
// passed the kernel filter is counted exactly once: delivered, reported as
// a decoder error, pending, or dropped for one reason, so that
//
//	Delivered + DecodeErrors + Pending + Dropped()
//
// is every datagram the stream has taken from the kernel, at any moment,
// and after the end (when Pending is 0) Delivered + DecodeErrors +
// Dropped() is every datagram that reached it. A fragmented datagram is
// counted once when it is delivered or dropped whole; a fragment dropped
// on its own (a bad IPv4 header checksum, say) counts where it fell, and
// its datagram may later count again as a reassembly timeout. Traffic the
// kernel filter rejects never reaches the stream and is not counted:
// other protocols, other ports (without WithPortErrors), copies of
// outgoing packets, and frames addressed to other hosts' link addresses
// (without WithAnyDestination).
type Stats struct {
	// Delivered counts datagrams sent on the channel with a nil Err,
	// including those still in its buffer. A datagram is counted just
	// after its send, so a consumer may for a moment hold one datagram
	// per receive goroutine that is not counted yet.
	Delivered uint64 `json:"delivered"`
	// DecodeErrors counts datagrams sent on the channel with the error
	// their decoder returned (or its recovered panic), counted as
	// Delivered is.
	DecodeErrors uint64 `json:"decode_errors"`
	// Pending counts datagrams decoded and waiting to be sent on the
	// channel: at most a batch per receive goroutine, and all of them
	// while a slow consumer keeps the channel full. It is not a drop; it
	// is 0 once the stream has ended.
	Pending uint64 `json:"pending"`

	// The drop reasons, which Dropped adds up. With WithPortErrors,
	// OtherPort datagrams reach the channel as errors, and with
	// WithDropErrors so do those counted in TooLong, Malformed and the
	// checksum fields; they are counted here all the same, not as
	// delivered.

	// OtherPort counts well-formed UDP datagrams to another port, which
	// only pass the kernel filter when they are fragmented, follow IPv6
	// extension headers, or WithPortErrors asks for them.
	OtherPort uint64 `json:"other_port"`
	// NotIP counts frames that are not IP of the socket's family, such as
	// an IPv4 header in a frame marked as IPv6.
	NotIP uint64 `json:"not_ip"`
	// NotUDP counts IP packets of another protocol that the kernel filter
	// could not tell from UDP: a TCP segment behind IPv6 extension
	// headers, or the fragments of an ICMP message.
	NotUDP uint64 `json:"not_udp"`
	// Malformed counts packets whose IP or UDP header is inconsistent: a
	// truncated header, an IPv4 total length longer than the frame, a UDP
	// length longer than the IP payload, a broken extension header chain,
	// a fragment whose length or offset cannot be.
	Malformed uint64 `json:"malformed"`
	// BadIPChecksum counts IPv4 packets whose header checksum is wrong.
	BadIPChecksum uint64 `json:"bad_ip_checksum"`
	// BadUDPChecksum counts UDP datagrams whose checksum is wrong, such
	// as one corrupted on the way that the NIC did not check.
	BadUDPChecksum uint64 `json:"bad_udp_checksum"`
	// ZeroUDPChecksum counts UDP datagrams over IPv6 with checksum 0,
	// which means "no checksum" in IPv4 but is forbidden in IPv6 (RFC
	// 8200, 8.1).
	ZeroUDPChecksum uint64 `json:"zero_udp_checksum"`
	// Unsupported counts datagrams the kernel would not deliver to a UDP
	// socket for reasons of their headers: an IPv6 routing header with
	// segments left (the packet is in transit), ESP or AH before UDP, a
	// UDP GSO super-packet of a kind that cannot be split.
	Unsupported uint64 `json:"unsupported"`
	// NotLocal counts datagrams whose destination is not an address of
	// this host (or whose source is a martian the kernel refuses, such
	// as 127.0.0.1 arriving on an Ethernet link): forwarded traffic, a
	// datagram to an address removed a moment ago, or one to a group the
	// stream joined only for other sources (WithJoinSource).
	NotLocal uint64 `json:"not_local"`
	// TooLong counts datagrams larger than the receive buffer could hold:
	// one too big for its ring slot when the socket's queue had no room
	// for the whole copy, as when a slow consumer lets 64 KiB loopback
	// datagrams pile up.
	TooLong uint64 `json:"too_long"`
	// FragOverlap counts fragmented datagrams dropped because two of
	// their fragments overlap or carry different bytes for the same
	// range.
	FragOverlap uint64 `json:"frag_overlap"`
	// FragTimeout counts fragmented datagrams whose fragments did not all
	// arrive within the reassembly timeout.
	FragTimeout uint64 `json:"frag_timeout"`
	// FragEvicted counts fragmented datagrams dropped to keep reassembly
	// within its limits (WithReassembly): memory, datagrams per source,
	// fragments per datagram, as a flood of fragments from spoofed
	// sources would make happen.
	FragEvicted uint64 `json:"frag_evicted"`
	// BadOptions counts datagrams whose IPv4 options or IPv6 Hop-by-Hop
	// or Destination options the kernel refuses: a Record Route pointer
	// out of range, a source route while accept_source_route is off, an
	// unknown IPv6 option whose type says discard, more than 7 bytes of
	// padding in a row.
	BadOptions uint64 `json:"bad_options"`
	// Martian counts datagrams from a source address the kernel refuses
	// whatever the host's addresses: a multicast source, 255.255.255.255,
	// or 0.0.0.0 to anything but a broadcast. (One of this host's own
	// addresses as the source of a datagram from the wire counts in
	// NotLocal.)
	Martian uint64 `json:"martian"`
	// FragECN counts reassembled datagrams dropped because their
	// fragments mixed Not-ECT with ECN-capable codepoints (RFC 3168,
	// 5.3), as when a middlebox cleared ECN on some of them.
	FragECN uint64 `json:"frag_ecn"`
	// Abandoned counts datagrams the stream had received but not handed
	// over when it ended: those decoded and waiting for the channel,
	// those still in the kernel ring, and fragmented datagrams still in
	// reassembly.
	Abandoned uint64 `json:"abandoned"`
	// Rejected counts, in kernel-verdict mode (ModeKernel), datagrams the
	// ring received that the kernel did not deliver to the stream's UDP
	// socket: an nftables or iptables rule dropped them, a sysctl such as
	// rp_filter refused them, or another rule of the kernel's own. The
	// other modes count none.
	Rejected uint64 `json:"rejected"`
	// KernelDrops counts frames the kernel dropped because the receive
	// ring was full (PACKET_STATISTICS), as happens when the consumer
	// falls behind for longer than the ring can hold. In socket mode it
	// counts the datagrams the kernel dropped at the UDP socket
	// (SK_MEMINFO_DROPS): its receive buffer full, or a bad checksum. In
	// kernel-verdict mode it also counts ring datagrams whose twin the
	// socket dropped for want of room.
	KernelDrops uint64 `json:"kernel_drops"`

	// SocketOnly counts, in kernel-verdict mode, datagrams the kernel
	// delivered to the stream's UDP socket whose copy in the ring never
	// came: the ring was full (counted in KernelDrops), or udpstream's own
	// checks dropped it (counted under that reason). It is not a drop of
	// its own, and not in Dropped: the datagram is counted where its ring
	// copy went. Datagrams arriving while Open sets the stream up may
	// count here too.
	SocketOnly uint64 `json:"socket_only"`
}

// Dropped returns the sum of every drop reason.
func (s Stats) Dropped() uint64 {
	return s.OtherPort + s.NotIP + s.NotUDP + s.Malformed + s.BadIPChecksum +
		s.BadUDPChecksum + s.ZeroUDPChecksum + s.Unsupported + s.NotLocal +
		s.TooLong + s.FragOverlap + s.FragTimeout +
		s.FragEvicted + s.BadOptions + s.Martian + s.FragECN + s.Abandoned + s.Rejected + s.KernelDrops
}

// field returns the Stats counter a drop verdict adds to.
func (s *Stats) field(v verdict) *uint64 {
	switch v {
	case dropOtherPort:
		return &s.OtherPort
	case dropNotIP:
		return &s.NotIP
	case dropNotUDP:
		return &s.NotUDP
	case dropMalformedIPHeader, dropMalformedIPLength, dropMalformedExtHeader,
		dropMalformedFragment, dropMalformedUDPHeader, dropMalformedUDPLength:
		return &s.Malformed
	case dropBadIPChecksum:
		return &s.BadIPChecksum
	case dropBadUDPChecksum:
		return &s.BadUDPChecksum
	case dropZeroChecksum6:
		return &s.ZeroUDPChecksum
	case dropUnsupported:
		return &s.Unsupported
	case dropNotLocal:
		return &s.NotLocal
	case dropTooLong:
		return &s.TooLong
	case dropFragOverlap:
		return &s.FragOverlap
	case dropFragTimeout:
		return &s.FragTimeout
	case dropFragEvicted:
		return &s.FragEvicted
	case dropBadOptions:
		return &s.BadOptions
	case dropMartian:
		return &s.Martian
	case dropFragECN:
		return &s.FragECN
	case dropKernel:
		return &s.KernelDrops
	case dropRejected:
		return &s.Rejected
	}
	return nil
}

// counters are one receive goroutine's counts. Each goroutine has its own
// so that two busy families do not share a cache line.
type counters struct {
	delivered    atomic.Uint64
	decodeErrors atomic.Uint64
	pending      atomic.Uint64
	abandoned    atomic.Uint64
	drops        [numVerdicts]atomic.Uint64
	_            [64]byte
}

func (c *counters) addTo(s *Stats) {
	// Pending first: a packet handed over between the two loads then
	// shows in both rather than in neither.
	s.Pending += c.pending.Load()
	s.Delivered += c.delivered.Load()
	s.DecodeErrors += c.decodeErrors.Load()
	s.Abandoned += c.abandoned.Load()
	for v := range numVerdicts {
		if n := c.drops[v].Load(); n != 0 {
			if f := s.field(v); f != nil {
				*f += n
			}
		}
	}
}

// frameMeta is what the kernel says about a frame besides its bytes.
type frameMeta struct {
	ifIndex int
	vouched bool // checksum validated by the kernel, or not yet computed
	sec     uint32
	nsec    uint32
	gso     int // segment size of a UDP GSO super-packet; -1 another kind
	ipLen   int // length of the whole IP datagram
}

func (m *frameMeta) flags() classifyFlags {
	if m.vouched {
		return flagChecksumVouched
	}
	return 0
}

// handler turns the frames of one receive goroutine into Packets.
type handler[T any] struct {
	out   chan<- Packet[T]
	dec   Decoder[T]
	fam   uint8
	port  uint16
	cfg   *config
	local *localAddrs
	reasm *reassembler
	tx    *sender

	p         parsed
	d         Datagram
	lastLocal localAnswer
	counts    counters

	// Packets made but not yet handed over, and the counter each goes
	// to when it is. The receive goroutine hands them over together when
	// the ring runs dry or the batch is full, then yields: the consumer
	// is woken once per batch, not once per datagram, and runs on this
	// thread rather than on one woken to take it.
	batch   [handoffBatch]Packet[T]
	counted [handoffBatch]*atomic.Uint64
	n       int // made
	sent    int // handed over
	// unsettled counts the packets handed over whose pending count is
	// still to be taken back (settle).
	unsettled int

	gsoBuf []byte // one segment of a UDP GSO super-packet at a time
	slab   slab   // the built-in decoders' copies

	// With WithFragments: the fragments of the datagram being finished,
	// as the reassembler handed them over, and the decoder's views of them.
	kept  []keptFragment
	frags []Fragment

	// ending is set once the stream has ended: frames still in the ring
	// are classified and counted, and none is made into a Packet.
	ending bool

	zones map[int]zoneName // interface names as zones, by index

	kv *kernelVerdict[T] // in kernel-verdict mode, the datagrams held for their twins
}

// handoffBatch bounds the datagrams a handler holds before it hands them
// to the consumer: a few microseconds of work.
const handoffBatch = 256

// handle processes one frame into the batch, handing the batch over when
// it is full. It blocks while the channel is full and returns an error
// only when ctx is done.
func (h *handler[T]) handle(ctx context.Context, frame []byte, m *frameMeta) error {
	if m.gso != 0 {
		return h.handleGSO(ctx, frame, m)
	}
	return h.handleOne(ctx, frame, m)
}

// handleGSO splits a UDP GSO super-packet into the datagrams a UDP socket
// would receive, and handles each as a frame of its own.
func (h *handler[T]) handleGSO(ctx context.Context, frame []byte, m *frameMeta) error {
	v := dropUnsupported
	if m.gso > 0 {
		v = classify(frame, h.fam, h.port, m.flags(), &h.p)
	}
	if v == fragment {
		v = dropUnsupported // a super-packet is never fragmented
	}
	if v != deliver && v != dropOtherPort {
		// Dropped whole: as many datagrams as it held. finish counts one.
		h.counts.drops[v].Add(uint64(gsoCount(frame, m.ipLen, m.gso) - 1))
		return h.finish(ctx, v, m)
	}
	// Views of frame, which stays put while its segments are handled.
	hdr, udp := h.p.ip[:len(h.p.ip)-len(h.p.l4)], h.p.udp
	if h.gsoBuf == nil {
		h.gsoBuf = make([]byte, 1<<16)
	}
	for i := 0; ; i++ {
		seg := gsoSegment(h.gsoBuf, hdr, udp, m.gso, i)
		if seg == nil {
			if i == 0 { // no payload to split
				return h.handleOne(ctx, frame, m)
			}
			return nil
		}
		if err := h.handleOne(ctx, seg, m); err != nil {
			// The stream has ended: the segments not yet made into
			// Packets are counted as what they would have been.
			h.ending = true
			for i++; ; i++ {
				if seg = gsoSegment(h.gsoBuf, hdr, udp, m.gso, i); seg == nil {
					return err
				}
				_ = h.handleOne(ctx, seg, m)
			}
		}
	}
}

// handleOne processes one datagram or fragment.
func (h *handler[T]) handleOne(ctx context.Context, frame []byte, m *frameMeta) error {
	v := classify(frame, h.fam, h.port, m.flags(), &h.p)
	if v != fragment {
		return h.finish(ctx, v, m)
	}
	// Link-local addresses are keyed with their link: two hosts on two
	// links may share one.
	src, dst := h.p.Src.Addr(), h.p.Dst.Addr()
	if h.fam == 6 {
		src, dst = h.zoned(src, m.ifIndex), h.zoned(dst, m.ifIndex)
	}
	// The monotonic clock, not the kernel's wall-clock stamp, so that a
	// clock step cannot expire every datagram at once.
	var kept *[]keptFragment
	if h.cfg.fragments {
		h.p.frag.arrival = keptFragment{ip: h.p.ip, sec: m.sec, nsec: m.nsec, ifIndex: m.ifIndex}
		kept = &h.kept
	}
	whole, n, v := h.reasm.add(h.p.Version, src, dst, &h.p.frag, time.Now(), kept)
	if whole == nil {
		if v != fragment {
			return h.finish(ctx, v, m)
		}
		return nil
	}
	defer h.releaseWhole(whole)
	v = classify(whole, h.fam, h.port, 0, &h.p)
	if v == fragment {
		v = dropMalformedFragment // a reassembled datagram is whole
	}
	if v == deliver || v == dropOtherPort {
		h.p.Fragments = n
		h.p.MF = h.p.Version == 4
	}
	return h.finish(ctx, v, m)
}

// releaseWhole gives a reassembled datagram and the fragments kept with
// it back to the reassembler, once they have been decoded.
func (h *handler[T]) releaseWhole(whole []byte) {
	h.reasm.release(whole, h.kept)
	clear(h.kept)
	h.kept = h.kept[:0]
}

// finish delivers, surfaces or counts a classified datagram.
func (h *handler[T]) finish(ctx context.Context, v verdict, m *frameMeta) error {
	switch {
	case v == deliver:
	case v == dropOtherPort && h.cfg.portErrors:
	case h.cfg.dropErrors && dropErrs[v] != nil:
		// Dropped and counted whatever becomes of the Packet that says
		// so; the header is what the parse got to.
		h.counts.drops[v].Add(1)
		return h.surface(ctx, m, dropErrs[v])
	default:
		h.counts.drops[v].Add(1)
		if v == dropBadUDPChecksum && h.kv != nil {
			h.kv.v.checksumDrops.Add(1)
		}
		return nil
	}
	// In kernel-verdict mode the kernel's delivery to the socket says
	// whether the destination is local.
	if !h.cfg.anyDestination && h.kv == nil && !h.isLocal(h.p.Src.Addr(), h.p.Dst.Addr(), m.ifIndex) {
		h.counts.drops[dropNotLocal].Add(1)
		return nil
	}
	if v == dropOtherPort {
		h.counts.drops[v].Add(1)
	}
	if h.ending {
		if v == deliver {
			h.counts.abandoned.Add(1)
		}
		return nil
	}

	pkt := h.newPacket(m)
	return h.decodeInto(ctx, pkt, v, h.p.ip, h.p.udp, h.p.udp[udpHeaderLen:])
}

// fragmentViews returns the Datagram.Fragments of the datagram being
// decoded: views of the fragments kept with it, nil for one that was not
// reassembled (or with WithFragments off).
func (h *handler[T]) fragmentViews() []Fragment {
	if len(h.kept) == 0 {
		return nil
	}
	h.frags = h.frags[:0]
	for _, k := range h.kept {
		h.frags = append(h.frags, Fragment{
			IP:      k.ip[:len(k.ip):len(k.ip)],
			IfIndex: k.ifIndex,
			Time:    time.Unix(int64(k.sec), int64(k.nsec)),
		})
	}
	return h.frags
}

// decodeInto decodes the datagram whose header pkt, the next entry of the
// batch, holds, and takes pkt into the batch: the way of every datagram to
// the channel, whichever the source. v is deliver, or dropOtherPort for
// one WithPortErrors surfaces (counted already).
func (h *handler[T]) decodeInto(ctx context.Context, pkt *Packet[T], v verdict, ip, udp, payload []byte) error {
	pkt.tx = h.tx
	// Field by field: a composite literal is built on the stack first and
	// copied, which showed in profiles.
	d := &h.d
	d.hdr, d.ip, d.udp, d.payload, d.frags, d.slab = &pkt.Header, ip, udp, payload, h.fragmentViews(), &h.slab
	pkt.Value, pkt.Err = decode(h.dec, d)
	*d = Datagram{}
	clear(h.frags)
	switch {
	case v == dropOtherPort:
		// Decoded all the same, so the caller can see what was sent;
		// the port is the error that matters. Counted above.
		pkt.Err = ErrNotDestPort
		h.counted[h.n] = nil
	case pkt.Err != nil:
		h.counted[h.n] = &h.counts.decodeErrors
		h.counts.pending.Add(1)
	default:
		h.counted[h.n] = &h.counts.delivered
		h.counts.pending.Add(1)
	}
	if h.kv != nil && v == deliver {
		return h.hold(ctx, payload)
	}
	return h.made(ctx)
}

// newPacket fills the next Packet of the batch with the parsed header.
// The packet is built in place, and the decoder's Datagram points at its
// header: a Header is large enough that copies show.
func (h *handler[T]) newPacket(m *frameMeta) *Packet[T] {
	pkt := &h.batch[h.n]
	pkt.Header = h.p.Header
	pkt.Header.IfIndex = m.ifIndex
	pkt.Header.Time = time.Unix(int64(m.sec), int64(m.nsec))
	if pkt.Header.Options != nil {
		pkt.Header.Options = clipClone(pkt.Header.Options)
	}
	if h.p.extN > 0 {
		pkt.Header.ExtHeaders = clipClone(h.p.ext[:h.p.extN])
	}
	if h.fam == 6 {
		h.setZones(&pkt.Header, m.ifIndex)
	}
	return pkt
}

// clipClone returns a copy of b whose capacity is its length, so that
// appending to it cannot reach memory shared with anything else.
func clipClone[E any](b []E) []E {
	c := make([]E, len(b))
	copy(c, b)
	return c
}

// made takes the Packet just filled into the batch, handing the batch
// over when it is full.
func (h *handler[T]) made(ctx context.Context) error {
	h.n++
	if h.n == len(h.batch) {
		return h.flush(ctx)
	}
	return nil
}

// tooLong counts a frame too long for the receive buffer as the n
// datagrams it held and, with WithDropErrors, surfaces it with the header
// as far as the bytes that were kept show it.
func (h *handler[T]) tooLong(ctx context.Context, kept []byte, m *frameMeta, n int) error {
	h.counts.drops[dropTooLong].Add(uint64(n))
	if !h.cfg.dropErrors || h.ending {
		return nil
	}
	classify(kept, h.fam, h.port, flagChecksumVouched, &h.p)
	h.p.udpPorts(kept)
	return h.surface(ctx, m, dropErrs[dropTooLong])
}

// surface takes into the batch a Packet that carries err and the parsed
// header, and no value: a dropped datagram that WithDropErrors shows, and
// counts already. A stream that has ended shows nothing more.
func (h *handler[T]) surface(ctx context.Context, m *frameMeta, err error) error {
	if h.ending {
		return nil
	}
	pkt := h.newPacket(m)
	pkt.Err = err
	h.counted[h.n] = nil
	return h.made(ctx)
}

// handed records that batch entry i reached the consumer. Its count
// moves out of pending at the next settle: until then it shows in both,
// never in neither.
func (h *handler[T]) handed(i int) {
	if c := h.counted[i]; c != nil {
		c.Add(1)
		h.unsettled++
	}
	h.batch[i] = Packet[T]{} // keep nothing the consumer now owns
}

// settle takes the packets handed over since the last settle out of
// pending: one atomic operation for a run of sends, not one each.
func (h *handler[T]) settle() {
	if h.unsettled > 0 {
		h.counts.pending.Add(-uint64(h.unsettled))
		h.unsettled = 0
	}
}

// tryFlush hands over what the channel has room for without blocking and
// reports whether the batch is now empty. Each packet is counted once its
// send has happened.
func (h *handler[T]) tryFlush() bool {
	defer h.settle()
	for h.sent < h.n {
		select {
		case h.out <- h.batch[h.sent]:
			h.handed(h.sent)
			h.sent++
		default:
			return false
		}
	}
	h.n, h.sent = 0, 0
	return true
}

// flush hands the whole batch over, blocking while the channel is full,
// and returns ctx's error if ctx is done first.
func (h *handler[T]) flush(ctx context.Context) error {
	for !h.tryFlush() {
		select {
		case h.out <- h.batch[h.sent]:
			h.handed(h.sent)
			h.sent++
			h.settle()
		case <-ctx.Done():
			h.discard()
			return ctx.Err()
		}
	}
	return nil
}

// discard drops what was made but not handed over, counting it as
// abandoned: a stream that ends delivers nothing more.
func (h *handler[T]) discard() {
	for i := h.sent; i < h.n; i++ {
		if h.counted[i] != nil {
			h.counts.abandoned.Add(1)
			h.counts.pending.Add(^uint64(0))
		}
	}
	clear(h.batch[h.sent:h.n])
	h.n, h.sent = 0, 0
}

// setZones gives IPv6 link-local addresses the arrival interface's name
// as their zone: the same fe80:: address may be a different host on each
// link, and a reply must leave by the link the datagram came in on.
func (h *handler[T]) setZones(hd *Header, ifIndex int) {
	hd.Src = netip.AddrPortFrom(h.zoned(hd.Src.Addr(), ifIndex), hd.Src.Port())
	hd.Dst = netip.AddrPortFrom(h.zoned(hd.Dst.Addr(), ifIndex), hd.Dst.Port())
}

// zoned returns a with the zone of interface ifIndex if it is an address
// of link scope, and a unchanged otherwise.
func (h *handler[T]) zoned(a netip.Addr, ifIndex int) netip.Addr {
	// Most addresses are global, and their first byte says so: the three
	// checks below cost a few percent of a datagram over IPv6.
	if a.Is6() && !a.Is4In6() && a.As16()[0] < 0xfe {
		return a
	}
	if a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast() {
		return a.WithZone(h.zone(ifIndex))
	}
	return a
}

// zoneTTL is how long an interface's name is trusted as its zone, so that
// a renamed interface shows its new name.
const zoneTTL = 10 * time.Second

// zone returns the name of interface ifIndex, or its index in decimal
// when it has none any more. Names are kept: asking the kernel allocates,
// and link-local traffic (mDNS on every interface, say) comes in on a few
// links over and over.
func (h *handler[T]) zone(ifIndex int) string {
	now := time.Now()
	if z, ok := h.zones[ifIndex]; ok && now.Sub(z.at) < zoneTTL {
		return z.name
	}
	name := strconv.Itoa(ifIndex)
	if ifi, err := net.InterfaceByIndex(ifIndex); err == nil {
		name = ifi.Name
	}
	if h.zones == nil || len(h.zones) >= maxZones {
		h.zones = make(map[int]zoneName)
	}
	h.zones[ifIndex] = zoneName{name, now}
	return name
}

// zoneName is an interface's name as a zone, and when it was asked for.
type zoneName struct {
	name string
	at   time.Time
}

// maxZones bounds the names a handler keeps; more interfaces than that
// start the cache afresh.
const maxZones = 64

// dropErrs are the Packet.Err values WithDropErrors surfaces, by verdict;
// nil for the verdicts it does not.
var dropErrs = [numVerdicts]error{
	dropMalformedIPHeader:  fmt.Errorf("%w: IP header truncated or its length wrong", ErrMalformed),
	dropMalformedIPLength:  fmt.Errorf("%w: IP datagram length disagrees with the frame", ErrMalformed),
	dropMalformedExtHeader: fmt.Errorf("%w: IPv6 extension header chain", ErrMalformed),
	dropMalformedFragment:  fmt.Errorf("%w: IP fragment", ErrMalformed),
	dropMalformedUDPHeader: fmt.Errorf("%w: UDP header truncated", ErrMalformed),
	dropMalformedUDPLength: fmt.Errorf("%w: UDP length disagrees with the IP datagram", ErrMalformed),
	dropBadIPChecksum:      fmt.Errorf("%w: IPv4 header checksum", ErrChecksum),
	dropBadUDPChecksum:     fmt.Errorf("%w: UDP checksum", ErrChecksum),
	dropZeroChecksum6:      fmt.Errorf("%w: zero UDP checksum over IPv6", ErrChecksum),
	dropTooLong:            ErrBufsizeTooShort,
}

// isLocal reports whether the kernel would deliver a datagram from src to
// a, arriving on interface ifIndex, to a local socket: a must be an
// address of this host or a multicast group ifIndex belongs to, and
// loopback addresses, as source or destination, and this host's own IPv4
// addresses as source count only on a loopback interface (elsewhere the
// kernel drops them as martians). Most traffic goes to one address, so
// the last yes is remembered for as long as the address set it came from
// is current: for a unicast destination it holds for any source, which
// is then checked alone (and not at all on a loopback interface), so that
// a server with many clients looks nothing up per datagram.
func (h *handler[T]) isLocal(src, a netip.Addr, ifIndex int) bool {
	set := h.local.cur.Load()
	if c := &h.lastLocal; set != nil && set == c.set && a == c.dst && ifIndex == c.ifIndex {
		if src == c.src {
			return true
		}
		if !c.bySource {
			// The destination is local; the source is to be judged.
			if !c.loopback && h.martianOffLoopback(set, src, a, ifIndex) {
				return false
			}
			c.src = src
			return true
		}
	}
	loopback := set.onLoopback(ifIndex)
	if !loopback && h.martianOffLoopback(set, src, a, ifIndex) {
		return false
	}
	if a.Is4() && a.IsUnspecified() && src.IsUnspecified() {
		return true // ip_route_input_slow takes 0.0.0.0 to 0.0.0.0 as a broadcast
	}
	var ok bool
	if a.IsMulticast() {
		set, ok = h.local.lookupGroup(src, a, ifIndex, loopback)
	} else {
		set, ok = h.local.lookup(a)
		if ok && a.Is6() && a.IsLinkLocalUnicast() && !set.onLink(a, ifIndex) {
			ok = false // another link's address (ip6_route_input, rt6_need_strict)
		}
	}
	if ok {
		// The set lookup returns may be newer than the one judged by.
		h.lastLocal = localAnswer{set: set, src: src, dst: a, ifIndex: ifIndex, loopback: set.onLoopback(ifIndex), bySource: a.IsMulticast()}
	}
	return ok
}

// martianOffLoopback reports whether the kernel drops a datagram from src
// to a that arrived on interface ifIndex, not a loopback interface, for
// its addresses alone: loopback addresses, as source or destination, and
// this host's own IPv4 addresses as source.
func (h *handler[T]) martianOffLoopback(set *addrSet, src, a netip.Addr, ifIndex int) bool {
	return a.IsLoopback() || src.IsLoopback() || src.Is4() && set.ownSource4(src, h.p.env.netRules().on(ifIndex))
}

// localAnswer is a datagram isLocal said yes to, and the address set it
// judged by.
type localAnswer struct {
	set      *addrSet
	src, dst netip.Addr
	ifIndex  int
	loopback bool // ifIndex is a loopback interface
	// bySource says the answer holds for src alone: a multicast group
	// may be joined for some sources only.
	bySource bool
}

// decode runs a user's decoder, turning a panic into an error so that one
// bad datagram cannot take the program down.
func decode[T any](dec Decoder[T], d *Datagram) (v T, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &DecoderPanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	return dec(d)
}
