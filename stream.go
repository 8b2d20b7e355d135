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
// (Packet.Reply). It needs CAP_NET_RAW. On other systems Listen returns an
// error wrapping errors.ErrUnsupported.
//
// What reaches the channel is what the kernel would hand a UDP socket bound
// to the unspecified address: well-formed datagrams to the port whose
// destination is an address of this host, with a valid checksum (or one the
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
	"net/netip"
	"runtime/debug"
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
	cancel context.CancelFunc
	done   chan struct{} // closed after ch is closed and resources released
	err    error         // why it ended; valid once ended is set
	ended  atomic.Bool   // set before ch is closed

	sys      *system
	tx       *sender // nil in monitor mode
	reasm    *reassembler
	handlers []*handler[T]
}

// Open is Listen with a handle. The stream runs until ctx is done, Close is
// called, or it fails; the channel is then closed once, after every
// goroutine of the stream has returned. Open fails with an error wrapping
// os.ErrPermission when the process lacks CAP_NET_RAW.
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
		cancel: cancel,
		done:   make(chan struct{}),
		sys:    sys,
	}
	if sys.reserve != nil {
		s.tx = &sender{conn: sys.reserve, def: cfg.send, local: sys.local}
	}
	s.reasm = newReassembler(reassemblyConfig{
		timeout:      cfg.reasmTimeout,
		maxBytes:     cfg.reasmMemory,
		maxFragments: cfg.reasmFragments,
		maxPerSource: cfg.reasmPerSource,
	})
	for _, src := range sys.sources {
		s.handlers = append(s.handlers, &handler[T]{
			out:   s.ch,
			dec:   dec,
			fam:   src.family(),
			port:  sys.port,
			cfg:   &cfg,
			local: sys.local,
			reasm: s.reasm,
			tx:    s.tx,
		})
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
	// Datagrams time out as later fragments arrive; a quiet stream learns
	// of them here.
	s.reasm.expire(time.Now())
	s.reasm.countDrops(&st)
	return st
}

// Stats counts what a stream has seen. Every unfragmented datagram that
// passed the kernel filter is counted exactly once: delivered, reported as
// a decoder error, or dropped for one reason. A fragmented one is counted
// once when it is delivered or dropped whole; a fragment dropped on its own
// (a bad IPv4 header checksum, say) counts where it fell, and its datagram
// may later count again as a reassembly timeout. Traffic the kernel filter
// rejects never reaches the stream and is not counted: other protocols,
// other ports (without WithPortErrors), copies of outgoing packets, and
// frames addressed to other hosts' link addresses (without
// WithAnyDestination).
type Stats struct {
	// Delivered counts datagrams sent on the channel with a nil Err,
	// including those still in its buffer.
	Delivered uint64 `json:"delivered"`
	// DecodeErrors counts datagrams sent on the channel with the error
	// their decoder returned (or its recovered panic).
	DecodeErrors uint64 `json:"decode_errors"`

	// The drop reasons. With WithPortErrors, OtherPort datagrams reach the
	// channel as errors; they are still counted here, not as delivered.
	OtherPort       uint64 `json:"other_port"`
	NotIP           uint64 `json:"not_ip"`
	NotUDP          uint64 `json:"not_udp"`
	Malformed       uint64 `json:"malformed"`
	BadIPChecksum   uint64 `json:"bad_ip_checksum"`
	BadUDPChecksum  uint64 `json:"bad_udp_checksum"`
	ZeroUDPChecksum uint64 `json:"zero_udp_checksum"`
	Unsupported     uint64 `json:"unsupported"`
	NotLocal        uint64 `json:"not_local"`
	TooLong         uint64 `json:"too_long"`
	FragOverlap     uint64 `json:"frag_overlap"`
	FragTimeout     uint64 `json:"frag_timeout"`
	FragEvicted     uint64 `json:"frag_evicted"`
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
	// KernelDrops counts frames the kernel dropped because the receive
	// ring was full (PACKET_STATISTICS).
	KernelDrops uint64 `json:"kernel_drops"`
}

// Dropped returns the sum of every drop reason.
func (s Stats) Dropped() uint64 {
	return s.OtherPort + s.NotIP + s.NotUDP + s.Malformed + s.BadIPChecksum +
		s.BadUDPChecksum + s.ZeroUDPChecksum + s.Unsupported + s.NotLocal +
		s.TooLong + s.FragOverlap + s.FragTimeout +
		s.FragEvicted + s.BadOptions + s.Martian + s.FragECN + s.KernelDrops
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
	}
	return nil
}

// counters are one receive goroutine's counts. Each goroutine has its own
// so that two busy families do not share a cache line.
type counters struct {
	delivered    atomic.Uint64
	decodeErrors atomic.Uint64
	drops        [numVerdicts]atomic.Uint64
	_            [64]byte
}

func (c *counters) addTo(s *Stats) {
	s.Delivered += c.delivered.Load()
	s.DecodeErrors += c.decodeErrors.Load()
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

	gsoBuf []byte // one segment of a UDP GSO super-packet at a time
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
		return h.finish(ctx, v, m, 1) // counts it
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
			return err
		}
	}
}

// handleOne processes one datagram or fragment.
func (h *handler[T]) handleOne(ctx context.Context, frame []byte, m *frameMeta) error {
	v := classify(frame, h.fam, h.port, m.flags(), &h.p)
	if v != fragment {
		return h.finish(ctx, v, m, 1)
	}
	// The monotonic clock, not the kernel's wall-clock stamp, so that a
	// clock step cannot expire every datagram at once.
	whole, n, v := h.reasm.add(h.p.Version, h.p.Src.Addr(), h.p.Dst.Addr(), &h.p.frag, time.Now())
	if whole == nil {
		if v != fragment {
			h.counts.drops[v].Add(1)
		}
		return nil
	}
	defer h.reasm.release(whole)
	v = classify(whole, h.fam, h.port, 0, &h.p)
	if v == fragment {
		v = dropMalformedFragment // a reassembled datagram is whole
	}
	if v == deliver || v == dropOtherPort {
		h.p.Fragments = n
		h.p.MF = h.p.Version == 4
	}
	return h.finish(ctx, v, m, n)
}

// finish delivers, surfaces or counts a classified datagram.
func (h *handler[T]) finish(ctx context.Context, v verdict, m *frameMeta, frags int) error {
	switch v {
	case deliver:
	case dropOtherPort:
		if !h.cfg.portErrors {
			h.counts.drops[v].Add(1)
			return nil
		}
	default:
		h.counts.drops[v].Add(1)
		return nil
	}
	if !h.cfg.anyDestination && !h.isLocal(h.p.Src.Addr(), h.p.Dst.Addr(), m.ifIndex) {
		h.counts.drops[dropNotLocal].Add(1)
		return nil
	}

	// The packet is built in place, and the decoder's Datagram points at
	// its header: a Header is large enough that copies show.
	pkt := &h.batch[h.n]
	pkt.Header = h.p.Header
	pkt.Header.IfIndex = m.ifIndex
	pkt.Header.Time = time.Unix(int64(m.sec), int64(m.nsec))
	if pkt.Header.Options != nil {
		pkt.Header.Options = append([]byte(nil), pkt.Header.Options...)
	}
	if h.p.extN > 0 {
		pkt.Header.ExtHeaders = append([]uint8(nil), h.p.ext[:h.p.extN]...)
	}
	pkt.tx = h.tx
	h.d.hdr, h.d.ip, h.d.udp = &pkt.Header, h.p.ip, h.p.udp
	pkt.Value, pkt.Err = decode(h.dec, &h.d)
	h.d = Datagram{}
	if v == dropOtherPort {
		// Decoded all the same, so the caller can see what was sent;
		// the port is the error that matters.
		pkt.Err = ErrNotDestPort
	}
	// Counted as it is handed over, in the counter chosen here.
	c := &h.counts.delivered
	switch {
	case v == dropOtherPort:
		c = &h.counts.drops[v]
	case pkt.Err != nil:
		c = &h.counts.decodeErrors
	}
	h.counted[h.n] = c
	h.n++
	if h.n == len(h.batch) {
		return h.flush(ctx)
	}
	return nil
}

// tryFlush hands over what the channel has room for without blocking and
// reports whether the batch is now empty. Each packet is counted just
// before its send, so that a consumer holding it finds it in Stats, and
// nothing the consumer never got is.
func (h *handler[T]) tryFlush() bool {
	for h.sent < h.n {
		c := h.counted[h.sent]
		c.Add(1)
		select {
		case h.out <- h.batch[h.sent]:
			h.batch[h.sent] = Packet[T]{} // keep nothing the consumer now owns
			h.sent++
		default:
			c.Add(^uint64(0))
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
		c := h.counted[h.sent]
		c.Add(1)
		select {
		case h.out <- h.batch[h.sent]:
			h.batch[h.sent] = Packet[T]{}
			h.sent++
		case <-ctx.Done():
			c.Add(^uint64(0))
			h.discard()
			return ctx.Err()
		}
	}
	return nil
}

// discard drops what was made but not handed over: a stream that ends
// delivers nothing more.
func (h *handler[T]) discard() {
	clear(h.batch[h.sent:h.n])
	h.n, h.sent = 0, 0
}

// isLocal reports whether the kernel would deliver a datagram from src to
// a, arriving on interface ifIndex, to a local socket: a must be an
// address of this host, and loopback addresses, as source or destination,
// and this host's own IPv4 addresses as source count only on a loopback
// interface (elsewhere the kernel drops them as martians). Most traffic is
// a few busy flows, so the last yes is remembered for as long as the
// address set it came from is current.
func (h *handler[T]) isLocal(src, a netip.Addr, ifIndex int) bool {
	set := h.local.cur.Load()
	if c := &h.lastLocal; set != nil && set == c.set && a == c.dst && src == c.src && ifIndex == c.ifIndex {
		return true
	}
	if !set.onLoopback(ifIndex) && (a.IsLoopback() || src.IsLoopback() || src.Is4() && set.ownSource4(src, h.p.env.netRules().on(ifIndex).rpFilter != 0)) {
		return false
	}
	if a.Is4() && a.IsUnspecified() && src.IsUnspecified() {
		return true // ip_route_input_slow takes 0.0.0.0 to 0.0.0.0 as a broadcast
	}
	set, ok := h.local.lookup(a)
	if ok {
		h.lastLocal = localAnswer{set: set, src: src, dst: a, ifIndex: ifIndex}
	}
	return ok
}

// localAnswer is a datagram isLocal said yes to, and the address set it
// judged by.
type localAnswer struct {
	set      *addrSet
	src, dst netip.Addr
	ifIndex  int
}

// decode runs a user's decoder, turning a panic into an error so that one
// bad datagram cannot take the program down.
func decode[T any](dec Decoder[T], d *Datagram) (v T, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v\n%s", ErrDecoderPanic, r, debug.Stack())
		}
	}()
	return dec(d)
}
