package udpstream

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"sync"
	"time"
	"unsafe"
)

// Reassembly defaults, used for any reassemblyConfig field left zero.
const (
	// defaultReasmTimeout is Linux's ipfrag_time: a datagram whose
	// fragments have not all arrived 30 s after the first is lost.
	defaultReasmTimeout = 30 * time.Second

	// defaultReasmMaxFragments covers the largest datagram (64 KiB) cut
	// for the IPv6 minimum MTU of 1280 bytes (54 fragments), and for any
	// IPv4 path whose MTU is at least 1044 bytes. It bounds the
	// per-datagram bookkeeping a stream of tiny fragments can make.
	defaultReasmMaxFragments = 64

	// defaultReasmMaxPerSource leaves room for many interleaved datagrams
	// from one busy sender while keeping one source from occupying the
	// whole table with datagrams that will never complete.
	defaultReasmMaxPerSource = 64

	// defaultReasmMaxBytes is Linux's ipfrag_high_thresh.
	defaultReasmMaxBytes = 4 << 20
)

// reassemblyConfig bounds a reassembler. Zero fields take the defaults.
type reassemblyConfig struct {
	// timeout is how long a datagram may take to arrive whole, counted
	// from the arrival of its first fragment (whichever that is).
	timeout time.Duration

	// maxFragments is the most fragments one datagram may arrive in.
	maxFragments int

	// maxPerSource is the most datagrams one source address may have in
	// reassembly at once; a new one evicts that source's oldest.
	maxPerSource int

	// maxBytes caps the memory the reassembler holds: the data and
	// headers of datagrams in reassembly, their bookkeeping (see
	// datagramOverhead), tombstones, and the free lists kept for reuse.
	// Adding past it evicts the oldest datagrams.
	maxBytes int

	// maxSourceBytes caps the part of maxBytes one source address may
	// hold. The default, maxBytes/4 (but at least one largest datagram),
	// keeps a flood from a few sources from evicting everyone else's
	// datagrams; a flood from many spoofed sources is met by evicting
	// the oldest datagrams first, so a datagram whose fragments arrive
	// close together still completes unless maxBytes of flood arrives
	// between its first and last fragment.
	maxSourceBytes int

	// keepFragments keeps a copy of each fragment as received with its
	// datagram, charged to the caps like the rest, for add to hand out
	// with the datagram it completes.
	keepFragments bool
}

// Limits of a reassembled datagram. The largest IPv4 datagram is 65535
// bytes with its header; the largest IPv6 datagram is a 40-byte header and
// a 65535-byte payload, which the kept Fragment header is part of.
const (
	reasmMaxTotal4 = ipv4MaxDatagram
	reasmMaxTotal6 = ipv6HeaderLen + ipv6MaxPayload
	// The smallest header each family's output can have, assumed until
	// the first fragment brings the real one.
	reasmMinHead4 = ipv4MinHeaderLen
	reasmMinHead6 = ipv6HeaderLen + ipv6FragHeaderLen
)

// reasmLimits returns the largest reassembled datagram of the family and
// the smallest header it can have; zero for an unknown version.
func reasmLimits(version uint8) (maxTotal, minHead int) {
	switch version {
	case 4:
		return reasmMaxTotal4, reasmMinHead4
	case 6:
		return reasmMaxTotal6, reasmMinHead6
	}
	return 0, 0
}

// Data is held in chunks: fixed 1 KiB windows of the fragmentable part,
// allocated as fragments fill them. A fragment is charged for the windows
// it touches, never for the offset it sits at, so a flood of tiny
// fragments at high offsets costs about what Linux charges for the same
// packets (roughly 1 KiB each) rather than a 64 KiB buffer apiece.
const chunkSize = 1 << 10

type chunk [chunkSize]byte

// maxChunks covers the longest fragmentable part either family allows.
const maxChunks = (reasmMaxTotal6 - reasmMinHead6 + chunkSize - 1) / chunkSize

// bufClasses are the sizes of the buffers that hold a first fragment's
// header and a finished datagram. Doubling classes waste at most half; the
// last class holds the largest datagram of either family.
var bufClasses = [...]int{1 << 10, 1 << 11, 1 << 12, 1 << 13, 1 << 14, 1 << 15, reasmMaxTotal6}

// bufClass returns the index of the smallest class holding n bytes, or -1.
func bufClass(n int) int {
	for i, c := range bufClasses {
		if n <= c {
			return i
		}
	}
	return -1
}

// classOf returns the index of the class whose size is exactly c, or -1.
func classOf(c int) int {
	if i := bufClass(c); i >= 0 && bufClasses[i] == c {
		return i
	}
	return -1
}

// fragKey identifies the datagram a fragment belongs to: source,
// destination, protocol and identification for IPv4 (RFC 791); source,
// destination and identification for IPv6 (RFC 8200, 4.5). Addresses keep
// their zone, so a caller that sets the receiving interface as the zone of
// link-local addresses keeps those datagrams apart per link.
type fragKey struct {
	src, dst netip.Addr
	id       uint32
	proto    uint8 // IPv4 protocol; 0 for IPv6
	version  uint8
}

// keptFragment is one fragment as it was received, kept with its
// datagram when the reassembler keeps fragments.
type keptFragment struct {
	ip        []byte // the fragment from its IP header on, in a pooled buffer
	sec, nsec uint32 // the kernel's receive time
	ifIndex   int    // the interface it arrived on
}

const keptSize = int(unsafe.Sizeof(keptFragment{}))

// fragRange is the data one fragment brought, [off, end) in bytes of the
// fragmentable part. Both fit 16 bits: no datagram reaches 64 KiB of data.
type fragRange struct{ off, end uint16 }

const rangeSize = int(unsafe.Sizeof(fragRange{}))

// datagram is one datagram in reassembly, or the tombstone of one that add
// dropped and reported through its verdict (overlap, inconsistent
// lengths, too many fragments, no room): a tombstone holds no data and
// only absorbs the fragments still on their way, so that they neither
// start a new reassembly nor get the datagram counted twice. Datagrams
// dropped to make room for others, or timed out, leave no tombstone: their
// late fragments begin a new reassembly, which ends in a drop of its own.
type datagram struct {
	key      fragKey
	src      *fragSource
	deadline time.Time

	// prev and next order every datagram by first arrival, oldest first;
	// sprev and snext do the same within its source.
	prev, next   *datagram
	sprev, snext *datagram

	chunks  [maxChunks]*chunk // data by window; nil where none arrived
	nchunks int

	head       []byte // the first fragment's head, in a pooled buffer
	headLen    int    // output header bytes; 0 until the first fragment
	nextHeader uint8  // the first fragment's Next Header (IPv6)

	ranges   []fragRange    // disjoint, by offset
	kept     []keptFragment // with keepFragments: in arrival order, one per range
	extent   int            // highest data end so far
	end      int            // data length, from the last fragment; -1 until then
	received int            // data bytes held: the sum of ranges

	dead bool
	cost int   // bytes charged: its record (recordSize), chunks, head, kept fragments
	ecn  uint8 // the ECN codepoints of its fragments, one bit each (1 << codepoint)
}

// Bits of datagram.ecn.
const (
	ecnNotECT = 1 << 0
	ecnCE     = 1 << 3
)

// fragSource is the per-source-address account.
type fragSource struct {
	addr           netip.Addr
	count          int // datagrams and tombstones
	bytes          int // their cost
	oldest, newest *datagram
}

// datagramOverhead is what one datagram costs besides its data, header
// and fragment list: its record, its entry in the datagram map, and at
// most one source record with its map entry. A map entry is estimated as
// its key, a pointer and 16 bytes of table overhead.
const datagramOverhead = int(unsafe.Sizeof(datagram{}) + unsafe.Sizeof(fragKey{}) + 8 + 16 +
	unsafe.Sizeof(fragSource{}) + unsafe.Sizeof(netip.Addr{}) + 8 + 16)

// initialRanges is the fragment-list capacity of a new datagram record;
// it doubles as fragments arrive, up to maxFragments.
const initialRanges = 8

// maxFreeSources bounds the spare source records kept for reuse.
const maxFreeSources = 64

// reassembler puts IPv4 and IPv6 fragments back together. It is pure (no
// system calls) and bounded in time and memory: every datagram it holds
// is dropped after cfg.timeout, and used+idle never exceeds cfg.maxBytes.
// It is safe for concurrent use; fragments are rare, so one mutex guards it.
//
// Memory outside maxBytes: datagrams handed out by add, and the fragments
// kept with them, until they are released; up to maxFreeSources spare
// source records; the free lists' slice headers; and the tables of the
// two maps, which keep the size of their largest population (at most
// maxBytes/datagramOverhead entries, each charged while in use).
type reassembler struct {
	mu  sync.Mutex
	cfg reassemblyConfig

	datagrams      map[fragKey]*datagram
	sources        map[netip.Addr]*fragSource
	oldest, newest *datagram

	used int // bytes charged to datagrams and tombstones
	idle int // bytes held by the free lists

	freeChunks    []*chunk
	freeBufs      [len(bufClasses)][][]byte
	freeDatagrams []*datagram
	freeSources   []*fragSource

	timeouts, evictions uint64
}

// newReassembler returns a reassembler bounded by cfg, whose zero fields
// take the defaults.
func newReassembler(cfg reassemblyConfig) *reassembler {
	if cfg.timeout <= 0 {
		cfg.timeout = defaultReasmTimeout
	}
	if cfg.maxFragments <= 0 {
		cfg.maxFragments = defaultReasmMaxFragments
	}
	// More fragments than 8-byte pieces of the largest datagram cannot be.
	cfg.maxFragments = min(cfg.maxFragments, reasmMaxTotal6/8+1)
	if cfg.maxPerSource <= 0 {
		cfg.maxPerSource = defaultReasmMaxPerSource
	}
	if cfg.maxBytes <= 0 {
		cfg.maxBytes = defaultReasmMaxBytes
	}
	if cfg.maxSourceBytes <= 0 {
		largest := datagramOverhead + cfg.maxFragments*rangeSize + maxChunks*chunkSize + bufClasses[0]
		if cfg.keepFragments {
			// Its fragments again, each in a buffer at most twice its
			// size, and their records.
			largest += 2*reasmMaxTotal6 + cfg.maxFragments*(keptSize+bufClasses[0])
		}
		cfg.maxSourceBytes = max(cfg.maxBytes/4, largest)
	}
	cfg.maxSourceBytes = min(cfg.maxSourceBytes, cfg.maxBytes)
	return &reassembler{
		cfg:       cfg,
		datagrams: make(map[fragKey]*datagram),
		sources:   make(map[netip.Addr]*fragSource),
	}
}

// add offers one fragment, as classify described it in f (f.head and
// f.data are only read during the call). version, src and dst come from
// the same parse. now is the fragment's arrival time; it should not go
// backwards by more than a little between calls, since datagrams expire
// in the order they began.
//
// When f completes a datagram, add returns it whole, frags is the number
// of fragments it arrived in and v is deliver. A reassembler that keeps
// fragments then appends them to *kept, if kept is not nil, in the order
// they were added, each with f.arrival as it was given (its bytes
// copied): one per range of data, so that an exact duplicate of a
// fragment held is not among them. The datagram is a complete
// IP packet that classify parses as an unfragmented one: for IPv4 the
// first fragment's header (options included) with MF and the offset
// cleared, the total length set and the checksum recomputed; for IPv6 the
// first fragment's header and the extension headers before its Fragment
// header, the payload length set, and the Fragment header kept as an
// atomic fragment (offset 0, M clear, same Next Header and
// Identification). whole, and the buffers of the fragments appended to
// *kept, are the caller's until it passes them to release.
//
// Otherwise whole is nil and v is fragment when f was absorbed (held, an
// exact duplicate, or a late piece of a datagram already dropped), or the
// reason f's datagram was dropped just now: dropFragOverlap,
// dropMalformedFragment (a fragment that contradicts the others about the
// datagram's length, or one add cannot take at all) or dropFragEvicted
// (over maxFragments, or no room within the memory caps). A datagram is
// reported through add's verdict at most once; drops of other datagrams
// that happen inside add (evictions, timeouts) are counted for drops.
func (r *reassembler) add(version uint8, src, dst netip.Addr, f *fragInfo, now time.Time, kept *[]keptFragment) (whole []byte, frags int, v verdict) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expireLocked(now)

	maxTotal, minHead := reasmLimits(version)
	if f == nil || !validFragment(version, f, maxTotal-minHead) {
		return nil, 0, dropMalformedFragment
	}
	keep := r.cfg.keepFragments
	if keep && (len(f.arrival.ip) == 0 || bufClass(len(f.arrival.ip)) < 0) {
		return nil, 0, dropMalformedFragment // the caller's bug: no packet to keep
	}
	off, end := f.offset, f.offset+len(f.data)
	k := fragKey{src: src, dst: dst, id: f.id, version: version}
	if version == 4 {
		k.proto = f.nextHeader
	}

	d := r.datagrams[k]
	if d != nil && !now.Before(d.deadline) {
		// Past its own timeout, though expireLocked, which walks in
		// arrival order, has not reached it: datagrams of the other
		// family may have a longer timeout.
		if !d.dead {
			r.timeouts++
		}
		r.remove(d)
		d = nil
	}
	if d != nil && d.dead {
		if len(f.data) > 0 { // an empty one has no place to take
			r.absorb(d, off, end, f.more)
		}
		return nil, 0, fragment
	}
	if len(f.data) == 0 {
		// A fragment with no data discards the datagram it belongs to,
		// and later fragments start anew (ip_frag_queue,
		// ip6_frag_queue). It is that datagram's drop, or its own.
		if d != nil {
			r.remove(d)
		}
		return nil, 0, dropMalformedFragment
	}
	if d == nil {
		if d = r.start(k, now); d == nil {
			return nil, 0, dropFragEvicted
		}
		if f.timeout > 0 {
			d.deadline = now.Add(f.timeout)
		}
	}

	i, pl := d.place(off, end, f.more)
	switch pl {
	case placeDuplicate:
		// The same piece again, as a duplicating link or two paths
		// deliver it. Different bytes for the same range mean two
		// datagrams share the key; neither can be trusted.
		if d.holds(off, f.data) {
			return nil, 0, fragment
		}
		r.kill(d)
		return nil, 0, dropFragOverlap
	case placeOverlap:
		r.kill(d)
		return nil, 0, dropFragOverlap
	case placeMalformed:
		r.kill(d)
		return nil, 0, dropMalformedFragment
	}
	if len(d.ranges) >= r.cfg.maxFragments {
		r.kill(d)
		return nil, 0, dropFragEvicted
	}

	headLen := d.headLen
	if off == 0 {
		headLen = len(f.head)
		if version == 6 {
			headLen += ipv6FragHeaderLen
		}
	}
	if max(headLen, minHead)+max(end, d.end, d.extent) > maxTotal {
		// Too long for the length field once the real header is known:
		// an IPv4 first fragment with options, or IPv6 extension headers.
		r.kill(d)
		return nil, 0, dropMalformedFragment
	}

	// Charge what this fragment adds before taking any of it.
	delta := 0
	for w := off / chunkSize; w <= (end-1)/chunkSize; w++ {
		if d.chunks[w] == nil {
			delta += chunkSize
		}
	}
	headCap := 0
	if off == 0 {
		headCap = bufClasses[bufClass(len(f.head))]
		delta += headCap
	}
	rangesCap := cap(d.ranges)
	if len(d.ranges) == rangesCap {
		rangesCap = min(max(2*rangesCap, initialRanges), r.cfg.maxFragments)
		delta += (rangesCap - cap(d.ranges)) * rangeSize
	}
	keptCap := 0
	if keep {
		keptCap = bufClasses[bufClass(len(f.arrival.ip))]
		delta += keptCap + max(rangesCap-cap(d.kept), 0)*keptSize
	}
	if !r.charge(d, delta) {
		r.kill(d)
		return nil, 0, dropFragEvicted
	}

	if rangesCap > cap(d.ranges) {
		nr := make([]fragRange, len(d.ranges), rangesCap)
		copy(nr, d.ranges)
		d.ranges = nr
	}
	if keep {
		if rangesCap > cap(d.kept) {
			nk := make([]keptFragment, len(d.kept), rangesCap)
			copy(nk, d.kept)
			d.kept = nk
		}
		k := f.arrival
		k.ip = r.takeBuf(keptCap)[:len(f.arrival.ip)]
		copy(k.ip, f.arrival.ip)
		d.kept = append(d.kept, k)
	}
	if off == 0 {
		d.head = r.takeBuf(headCap)[:len(f.head)]
		copy(d.head, f.head)
		d.headLen = headLen
		d.nextHeader = f.nextHeader
	}
	d.write(r, off, f.data)
	d.insert(i, off, end, f.more)
	d.ecn |= 1 << (f.ecn & 3)

	if d.headLen == 0 || d.end < 0 || d.received != d.end {
		return nil, 0, fragment
	}
	if d.ecn&ecnNotECT != 0 && d.ecn&^ecnNotECT != 0 {
		// Not-ECT fragments with ECN-capable ones: RFC 3168, 5.3
		// (ip_frag_ecn_table).
		r.kill(d)
		return nil, 0, dropFragECN
	}
	if kept != nil {
		r.handOver(d, kept)
	}
	whole, frags = r.finish(d)
	return whole, frags, deliver
}

// validFragment checks what add needs of f before trusting any of it:
// classify guarantees all of it, but add never relies on that.
func validFragment(version uint8, f *fragInfo, maxEnd int) bool {
	n := len(f.data)
	if maxEnd <= 0 || f.offset < 0 || f.offset%8 != 0 || f.more && n%8 != 0 || f.offset > maxEnd-n {
		return false
	}
	if f.offset != 0 || n == 0 {
		return true
	}
	h := f.head
	switch version {
	case 4:
		return len(h) >= ipv4MinHeaderLen && h[0]>>4 == 4 && int(h[0]&0x0f)*4 == len(h)
	case 6:
		return len(h) >= ipv6HeaderLen && h[0]>>4 == 6
	}
	return false
}

// placement is where a new fragment falls among a datagram's others.
type placement uint8

const (
	placeNew placement = iota
	placeDuplicate
	placeOverlap
	placeMalformed
)

// place finds where [off, end) goes in d.ranges and whether it may. A
// fragment with more set must end before the datagram's end; one without
// it fixes the end, which every other fragment must then respect: a
// second last fragment that disagrees, or any fragment reaching past the
// end, is malformed (RFC 791; RFC 8200, 4.5).
func (d *datagram) place(off, end int, more bool) (int, placement) {
	switch {
	case more:
		if d.end >= 0 && end >= d.end {
			return 0, placeMalformed
		}
	case d.end >= 0:
		if end != d.end {
			return 0, placeMalformed
		}
	case d.extent >= end:
		// Data already reaches this last fragment's end, and all of it
		// came in fragments that said more follows.
		return 0, placeMalformed
	}
	lo, hi := 0, len(d.ranges)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if int(d.ranges[m].off) < off {
			lo = m + 1
		} else {
			hi = m
		}
	}
	i := lo
	if i < len(d.ranges) && int(d.ranges[i].off) == off && int(d.ranges[i].end) == end {
		return i, placeDuplicate
	}
	if i > 0 && int(d.ranges[i-1].end) > off || i < len(d.ranges) && int(d.ranges[i].off) < end {
		return i, placeOverlap
	}
	return i, placeNew
}

// insert records [off, end) at index i, which place returned. The caller
// has made room in d.ranges.
func (d *datagram) insert(i, off, end int, more bool) {
	d.ranges = d.ranges[:len(d.ranges)+1]
	copy(d.ranges[i+1:], d.ranges[i:])
	d.ranges[i] = fragRange{uint16(off), uint16(end)}
	d.received += end - off
	d.extent = max(d.extent, end)
	if !more {
		d.end = end
	}
}

// write copies data to offset off, taking the chunks it lands in (already
// charged) from r.
func (d *datagram) write(r *reassembler, off int, data []byte) {
	for len(data) > 0 {
		w, o := off/chunkSize, off%chunkSize
		c := d.chunks[w]
		if c == nil {
			c = r.takeChunk()
			d.chunks[w] = c
			d.nchunks++
		}
		n := copy(c[o:], data)
		data = data[n:]
		off += n
	}
}

// holds reports whether d already holds data at offset off.
func (d *datagram) holds(off int, data []byte) bool {
	for len(data) > 0 {
		w, o := off/chunkSize, off%chunkSize
		n := min(len(data), chunkSize-o)
		if d.chunks[w] == nil || !bytes.Equal(d.chunks[w][o:o+n], data[:n]) {
			return false
		}
		data = data[n:]
		off += n
	}
	return true
}

// absorb takes a fragment of a dropped datagram. It keeps account of the
// pieces that fit, so that the tombstone can go as soon as the rest of
// the datagram has arrived: the key is then free again for a new datagram
// that reuses the identification. A tombstone never grows.
func (r *reassembler) absorb(d *datagram, off, end int, more bool) {
	i, pl := d.place(off, end, more)
	if pl != placeNew || len(d.ranges) == cap(d.ranges) {
		return
	}
	d.insert(i, off, end, more)
	if d.end >= 0 && d.received == d.end {
		r.remove(d)
	}
}

// start begins a datagram for k, evicting what the limits require. It
// returns nil when even that cannot make room, which only a cap smaller
// than one empty record can cause; the datagram's fragments are then each
// reported as evicted.
func (r *reassembler) start(k fragKey, now time.Time) *datagram {
	d := r.takeDatagram()
	cost := recordSize(d)
	if cost > r.cfg.maxSourceBytes {
		r.putDatagram(d)
		return nil
	}
	// The source's own limits first: they evict only its datagrams.
	for {
		s := r.sources[k.src]
		if s == nil || s.count < r.cfg.maxPerSource && s.bytes+cost <= r.cfg.maxSourceBytes {
			break
		}
		r.evict(s.oldest)
	}
	if !r.makeRoom(cost, nil) {
		r.putDatagram(d)
		return nil
	}
	s := r.source(k.src)
	d.key, d.src = k, s
	d.deadline = now.Add(r.cfg.timeout)
	d.end = -1
	d.cost = cost
	r.used += cost
	s.bytes += cost
	s.count++

	d.prev = r.newest
	if r.newest != nil {
		r.newest.next = d
	} else {
		r.oldest = d
	}
	r.newest = d
	d.sprev = s.newest
	if s.newest != nil {
		s.newest.snext = d
	} else {
		s.oldest = d
	}
	s.newest = d
	r.datagrams[k] = d
	return d
}

// charge adds delta bytes to d's cost, first evicting what the caps
// require: the source's other datagrams for its own cap, then anyone's,
// oldest first, for the global one. It reports false, charging nothing,
// when even that leaves no room.
func (r *reassembler) charge(d *datagram, delta int) bool {
	if delta == 0 {
		return true
	}
	s := d.src
	for s.bytes+delta > r.cfg.maxSourceBytes {
		v := s.oldest
		if v == d {
			v = v.snext
		}
		if v == nil {
			return false
		}
		r.evict(v)
	}
	if !r.makeRoom(delta, d) {
		return false
	}
	r.used += delta
	s.bytes += delta
	d.cost += delta
	return true
}

// makeRoom evicts until n more bytes fit under maxBytes: the free lists
// go first, then the oldest datagrams other than keep.
func (r *reassembler) makeRoom(n int, keep *datagram) bool {
	if n > r.cfg.maxBytes {
		return false
	}
	for r.used+r.idle+n > r.cfg.maxBytes {
		if r.idle > 0 {
			r.dropIdle()
			continue
		}
		v := r.oldest
		if v == keep {
			v = v.next
		}
		if v == nil {
			return false
		}
		r.evict(v)
	}
	return true
}

// finish builds a complete datagram in a buffer of its own and forgets
// the datagram.
func (r *reassembler) finish(d *datagram) ([]byte, int) {
	total := d.headLen + d.end
	b := r.takeBuf(bufClasses[bufClass(total)])[:total]
	copy(b, d.head)
	for w, off := 0, 0; off < d.end; w, off = w+1, off+chunkSize {
		copy(b[d.headLen+off:total], d.chunks[w][:])
	}
	if d.ecn&ecnCE != 0 {
		// Congestion met by any fragment is met by the datagram.
		if d.key.version == 4 {
			b[1] |= 3
		} else {
			b[1] |= 3 << 4
		}
	}
	if d.key.version == 4 {
		binary.BigEndian.PutUint16(b[2:], uint16(total))
		fo := binary.BigEndian.Uint16(b[6:]) &^ (ipv4FlagMF | ipv4OffsetMask)
		binary.BigEndian.PutUint16(b[6:], fo)
		b[10], b[11] = 0, 0
		binary.BigEndian.PutUint16(b[10:], ipv4HeaderChecksum(b[:d.headLen]))
	} else {
		binary.BigEndian.PutUint16(b[4:], uint16(total-ipv6HeaderLen))
		fh := b[len(d.head):d.headLen]
		fh[0] = d.nextHeader
		fh[1], fh[2], fh[3] = 0, 0, 0
		binary.BigEndian.PutUint32(fh[4:], d.key.id)
	}
	frags := len(d.ranges)
	r.remove(d)
	return b, frags
}

// handOver appends the fragments d keeps to *kept, which owns their
// buffers from now on: they are no longer charged.
func (r *reassembler) handOver(d *datagram, kept *[]keptFragment) {
	c := 0
	for i, k := range d.kept {
		c += cap(k.ip)
		*kept = append(*kept, k)
		d.kept[i] = keptFragment{}
	}
	d.kept = d.kept[:0]
	r.used -= c
	d.src.bytes -= c
	d.cost -= c
}

// kill turns d into a tombstone: its data goes, its record stays until
// its timeout or until the rest of its fragments have arrived.
func (r *reassembler) kill(d *datagram) {
	r.dropData(d)
	d.dead = true
}

// dropData uncharges d's chunks, header and kept fragments and puts them
// on the free lists.
func (r *reassembler) dropData(d *datagram) {
	c := d.nchunks*chunkSize + cap(d.head)
	for _, k := range d.kept {
		c += cap(k.ip)
	}
	r.used -= c
	d.src.bytes -= c
	d.cost -= c
	for w, ch := range d.chunks {
		if ch != nil {
			d.chunks[w] = nil
			r.putChunk(ch)
		}
	}
	d.nchunks = 0
	r.putBuf(d.head)
	d.head = nil
	for i, k := range d.kept {
		r.putBuf(k.ip)
		d.kept[i] = keptFragment{}
	}
	d.kept = d.kept[:0]
}

// evict drops d to honour a limit, counting it unless it was already
// counted when it became a tombstone.
func (r *reassembler) evict(d *datagram) {
	if !d.dead {
		r.evictions++
	}
	r.remove(d)
}

// remove forgets d and recycles what it held.
func (r *reassembler) remove(d *datagram) {
	r.dropData(d)
	if d.prev != nil {
		d.prev.next = d.next
	} else {
		r.oldest = d.next
	}
	if d.next != nil {
		d.next.prev = d.prev
	} else {
		r.newest = d.prev
	}
	s := d.src
	if d.sprev != nil {
		d.sprev.snext = d.snext
	} else {
		s.oldest = d.snext
	}
	if d.snext != nil {
		d.snext.sprev = d.sprev
	} else {
		s.newest = d.sprev
	}
	delete(r.datagrams, d.key)
	r.used -= d.cost
	s.bytes -= d.cost
	s.count--
	if s.count == 0 {
		delete(r.sources, s.addr)
		*s = fragSource{}
		if len(r.freeSources) < maxFreeSources {
			r.freeSources = append(r.freeSources, s)
		}
	}
	*d = datagram{ranges: d.ranges[:0], kept: d.kept[:0]}
	r.putDatagram(d)
}

// source returns the account of addr, creating it.
func (r *reassembler) source(addr netip.Addr) *fragSource {
	if s := r.sources[addr]; s != nil {
		return s
	}
	var s *fragSource
	if n := len(r.freeSources); n > 0 {
		s = r.freeSources[n-1]
		r.freeSources[n-1] = nil
		r.freeSources = r.freeSources[:n-1]
	} else {
		s = new(fragSource)
	}
	s.addr = addr
	r.sources[addr] = s
	return s
}

// takeChunk returns a chunk, reused when one is free. Its bytes are stale.
func (r *reassembler) takeChunk() *chunk {
	if n := len(r.freeChunks); n > 0 {
		c := r.freeChunks[n-1]
		r.freeChunks[n-1] = nil
		r.freeChunks = r.freeChunks[:n-1]
		r.idle -= chunkSize
		return c
	}
	return new(chunk)
}

// putChunk keeps c for reuse if the cap allows.
func (r *reassembler) putChunk(c *chunk) {
	if r.used+r.idle+chunkSize > r.cfg.maxBytes {
		return
	}
	r.freeChunks = append(r.freeChunks, c)
	r.idle += chunkSize
}

// takeBuf returns a buffer of class size c, reused when one is free.
func (r *reassembler) takeBuf(c int) []byte {
	ci := classOf(c)
	if l := r.freeBufs[ci]; len(l) > 0 {
		b := l[len(l)-1]
		l[len(l)-1] = nil
		r.freeBufs[ci] = l[:len(l)-1]
		r.idle -= c
		return b
	}
	return make([]byte, c)
}

// putBuf keeps b for reuse if it is one of ours and the cap allows.
func (r *reassembler) putBuf(b []byte) {
	c := cap(b)
	ci := classOf(c)
	if ci < 0 || r.used+r.idle+c > r.cfg.maxBytes {
		return
	}
	r.freeBufs[ci] = append(r.freeBufs[ci], b[:c])
	r.idle += c
}

// recordSize is what d's record costs, in use or free: datagramOverhead
// and the capacity of its lists.
func recordSize(d *datagram) int {
	return datagramOverhead + cap(d.ranges)*rangeSize + cap(d.kept)*keptSize
}

// takeDatagram returns a cleared datagram record, reused when one is free.
func (r *reassembler) takeDatagram() *datagram {
	if n := len(r.freeDatagrams); n > 0 {
		d := r.freeDatagrams[n-1]
		r.freeDatagrams[n-1] = nil
		r.freeDatagrams = r.freeDatagrams[:n-1]
		r.idle -= recordSize(d)
		return d
	}
	return &datagram{ranges: make([]fragRange, 0, min(initialRanges, r.cfg.maxFragments))}
}

// putDatagram keeps a cleared record for reuse if the cap allows.
func (r *reassembler) putDatagram(d *datagram) {
	c := recordSize(d)
	if r.used+r.idle+c > r.cfg.maxBytes {
		return
	}
	r.freeDatagrams = append(r.freeDatagrams, d)
	r.idle += c
}

// dropIdle lets the garbage collector have everything on the free lists.
func (r *reassembler) dropIdle() {
	clear(r.freeChunks)
	r.freeChunks = r.freeChunks[:0]
	for i := range r.freeBufs {
		clear(r.freeBufs[i])
		r.freeBufs[i] = r.freeBufs[i][:0]
	}
	clear(r.freeDatagrams)
	r.freeDatagrams = r.freeDatagrams[:0]
	r.idle = 0
}

// release takes back a datagram add returned, and the fragments it
// appended to kept, for reuse. whole must be the slice add returned (or a
// reslice of it that starts at the same byte), and each kept ip as add
// gave it, passed once; nil is ignored.
func (r *reassembler) release(whole []byte, kept []keptFragment) {
	if whole == nil && len(kept) == 0 {
		return
	}
	r.mu.Lock()
	if whole != nil {
		r.putBuf(whole)
	}
	for _, k := range kept {
		r.putBuf(k.ip)
	}
	r.mu.Unlock()
}

// expire drops the datagrams whose timeout has passed at now, counting
// them. add does this too; a caller should also call it from time to time
// when no fragments arrive, so that timeouts are counted and memory freed
// without waiting for the next fragment.
func (r *reassembler) expire(now time.Time) {
	r.mu.Lock()
	r.expireLocked(now)
	r.mu.Unlock()
}

func (r *reassembler) expireLocked(now time.Time) {
	for d := r.oldest; d != nil && !now.Before(d.deadline); d = r.oldest {
		if !d.dead {
			r.timeouts++
		}
		r.remove(d)
	}
}

// abandon forgets every datagram in reassembly, for a stream that ends,
// and returns how many there were, tombstones (already counted) excluded.
func (r *reassembler) abandon() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for d := r.oldest; d != nil; d = r.oldest {
		if !d.dead {
			n++
		}
		r.remove(d)
	}
	return n
}

// drops returns how many datagrams timed out and how many were evicted to
// honour the limits, since the reassembler began. They are the drops that
// befall datagrams other than the one add is called for; drops add
// reports through its verdict are not included, so adding both counts
// every lost datagram once.
func (r *reassembler) drops() (timeouts, evictions uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.timeouts, r.evictions
}

// countDrops adds the counts of drops to st.
func (r *reassembler) countDrops(st *Stats) {
	t, e := r.drops()
	st.FragTimeout += t
	st.FragEvicted += e
}

// inUse returns the bytes charged to datagrams in reassembly and to
// tombstones, free lists excluded.
func (r *reassembler) inUse() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.used
}
