package udpstream

import (
	"context"
	"encoding/binary"
	"hash/maphash"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Kernel-verdict mode pairs each datagram the ring yields with its twin:
// the same datagram as the kernel delivered it to the stream's UDP socket.
// A twin is known by its addresses, ports and payload length, a hash of the
// payload's first bytes, and the kernel's receive time, which the packet
// socket and the UDP socket both read from the one sk_buff they share (a
// reassembled datagram has its last fragment's, for both). Datagrams alike
// in all of that, such as the identical segments of one UDP GSO
// super-packet, pair in the order they came, which is the kernel's for
// both. The receive time is the kernel's only once timestamps are on,
// which the stream's socket asks for before its packet sockets open; a
// datagram that arrived before would not pair, and would count as
// rejected, its twin in Stats.SocketOnly.

// twinPrefix is how much of a payload the pairing hashes, and how much of
// each twin the stream reads from its socket.
const twinPrefix = 64

// twinKey identifies a datagram for pairing, bar its receive time.
type twinKey struct {
	src, dst     [16]byte // IPv4 as IPv4-mapped IPv6
	sport, dport uint16
	n            uint16 // payload length
	hash         uint32 // of the payload's first twinPrefix bytes
}

// makeTwinKey builds the key of a datagram from its addresses, its payload
// length and its first bytes.
func makeTwinKey(seed maphash.Seed, src, dst netip.AddrPort, n int, prefix []byte) twinKey {
	if len(prefix) > twinPrefix {
		prefix = prefix[:twinPrefix]
	}
	return twinKey{
		src:   src.Addr().As16(),
		dst:   dst.Addr().As16(),
		sport: src.Port(),
		dport: dst.Port(),
		n:     uint16(n),
		hash:  uint32(maphash.Bytes(seed, prefix)),
	}
}

// bucket spreads keys with receive time ts over a table of 1<<bits
// buckets. The time spreads a run of datagrams alike in all but it.
func (k *twinKey) bucket(ts int64, bits uint) uint32 {
	h := uint64(k.hash) ^ uint64(k.sport)<<32 ^ uint64(k.dport)<<48 ^ uint64(ts)*0xff51afd7ed558ccd ^
		binary.LittleEndian.Uint64(k.src[8:]) ^ binary.LittleEndian.Uint64(k.dst[8:])*31
	h *= 0x9e3779b97f4a7c15
	return uint32(h >> (64 - bits))
}

// keyTable is a fixed-capacity multimap from a twinKey and a receive time
// to int32 references,
// with its entries also in a list by age. It never allocates after it is
// made.
type keyTable struct {
	bits    uint
	buckets []int32 // first entry of each chain; -1 for none
	ents    []tableEntry
	free    int32 // first free entry; -1 for none
	n       int
	seq     uint64
	oldest  int32 // the age list: oldest and newest entry, -1 for none
	newest  int32
}

type tableEntry struct {
	key   twinKey
	ts    int64 // kernel receive time, ns since the epoch
	at    int64 // when the entry was added, on the monotonic clock
	wall  int64 // the same, ns since the epoch
	rx    int64 // for a twin, the kernel's receive time; ts may be 0 (see pairTime)
	seq   uint64
	ref   int32
	fam   uint8
	next  int32 // in the bucket's chain
	older int32 // in the age list
	newer int32
}

func newKeyTable(capacity int) keyTable {
	bits := uint(1)
	for 1<<bits < 2*capacity {
		bits++
	}
	t := keyTable{
		bits:    bits,
		buckets: make([]int32, 1<<bits),
		ents:    make([]tableEntry, capacity),
		oldest:  -1,
		newest:  -1,
	}
	for i := range t.buckets {
		t.buckets[i] = -1
	}
	for i := range t.ents {
		t.ents[i].next = int32(i + 1)
	}
	t.ents[len(t.ents)-1].next = -1
	return t
}

// room is how many more entries add would take.
func (t *keyTable) room() int { return len(t.ents) - t.n }

// full reports whether add would fail.
func (t *keyTable) full() bool { return t.free < 0 }

// len is the number of entries.
func (t *keyTable) len() int { return t.n }

// add inserts an entry and returns its index, or -1 when the table is full.
func (t *keyTable) add(k twinKey, ts, at, wall, rx int64, fam uint8, ref int32) int32 {
	i := t.free
	if i < 0 {
		return -1
	}
	e := &t.ents[i]
	t.free = e.next
	b := k.bucket(ts, t.bits)
	t.seq++
	*e = tableEntry{key: k, ts: ts, at: at, wall: wall, rx: rx, seq: t.seq, ref: ref, fam: fam, next: t.buckets[b], older: t.newest, newer: -1}
	t.buckets[b] = i
	if t.newest >= 0 {
		t.ents[t.newest].newer = i
	} else {
		t.oldest = i
	}
	t.newest = i
	t.n++
	return i
}

// take removes and returns the oldest entry for k with receive time ts.
func (t *keyTable) take(k twinKey, ts int64) (tableEntry, bool) {
	best := int32(-1)
	for i := t.buckets[k.bucket(ts, t.bits)]; i >= 0; i = t.ents[i].next {
		e := &t.ents[i]
		if e.key == k && e.ts == ts && (best < 0 || e.seq < t.ents[best].seq) {
			best = i
		}
	}
	if best < 0 {
		return tableEntry{}, false
	}
	e := t.ents[best]
	t.remove(best)
	return e, true
}

// entry returns entry i, which must be in the table.
func (t *keyTable) entry(i int32) *tableEntry { return &t.ents[i] }

// remove deletes entry i, which must be in the table.
func (t *keyTable) remove(i int32) {
	e := &t.ents[i]
	p := &t.buckets[e.key.bucket(e.ts, t.bits)]
	for *p != i {
		p = &t.ents[*p].next
	}
	*p = e.next
	if e.older >= 0 {
		t.ents[e.older].newer = e.newer
	} else {
		t.oldest = e.newer
	}
	if e.newer >= 0 {
		t.ents[e.newer].older = e.older
	} else {
		t.newest = e.older
	}
	e.next = t.free
	t.free = i
	t.n--
}

// When a twin cannot come any more. A datagram's twin reaches the socket
// in the same pass of the kernel's receive path that writes its ring
// frame; the ring hands frames over in the order it reserved them, so a
// frame can become visible a little after its twin, and under load the
// gap between the two has been seen to reach a few hundred microseconds.
// twinGrace is far more. Once the ring datagram has been taken, its twin
// is then on the socket, or will be within twinGrace, unless the kernel
// refused it. So the datagram is refused
//
//   - when a read that began twinGrace after it was taken found the socket
//     empty, or
//   - when a datagram later in the same ring paired, and a whole read of
//     the socket began twinGrace after that: the twin of the earlier one
//     was queued before that of the later one, give or take that gap, and
//     every read takes the socket's oldest first.
//
// Neither rule depends on the order of the kernel's receive times, which
// datagrams queued on two CPUs' backlogs do not keep.
const (
	twinGrace = 10 * time.Millisecond
	twinPoll  = 50 * time.Microsecond // a receive goroutine's wait for twins

	twinLate = 200 * time.Millisecond

	heldMax    = 4096 // ring datagrams a receive goroutine holds for their twins
	settleHeld = 64   // held datagrams after which a busy goroutine pairs

)

// twinReader reads the twins waiting on the stream's UDP socket.
type twinReader interface {
	// readTwins reads what the socket holds, up to a bound and while v
	// has room, and passes each twin to v.twin; it notes in v when it
	// found the socket empty and when a read not cut short for room
	// began.
	readTwins(v *verdicts)
	// drops returns the socket's count of datagrams it dropped.
	drops() uint64
}

// verdicts is the pairing state a kernel-verdict stream's receive
// goroutines share.
type verdicts struct {
	mu    sync.Mutex
	sock  twinReader
	port  uint16
	seed  maphash.Seed
	base  time.Time // of the monotonic clock the entries' times count on
	held  keyTable  // ring datagrams waiting for their twin; ref: owner<<16 | slot
	twins keyTable  // twins read before their ring datagram

	owners []*twinOwner

	evict       bool   // a full table of twins makes room by its oldest
	drain       bool   // read the socket though no ring datagram waits
	sockEmptyAt int64  // when the last read that found the socket empty began
	readAt      int64  // when the last whole read began
	dropsSeen   uint64 // the socket's drop count when last read
	dropsWall   int64  // when, ns since the epoch, it was last seen to grow
	overflowed  uint64 // ring datagrams without twin set against those drops

	// Datagrams the ring dropped for a bad UDP checksum, which the
	// socket drops and counts too.
	checksumDrops atomic.Uint64

	socketOnly atomic.Uint64 // twins whose ring datagram never came
	pairs      uint64        // ring datagrams paired; under mu

	scratch Header // a twin's, as it is read
}

// twinOwner is one receive goroutine's part of the pairing state.
type twinOwner struct {
	fam     uint8
	paired  []bool      // by held slot: the twin came
	seqs    []uint64    // by held slot: its place in the ring's order
	emptyAt int64       // just before its ring was last found empty
	asleep  bool        // waiting in the poller for its ring
	ready   func() bool // whether its ring has a frame to take; asked only while asleep
	lastTS  int64       // the latest receive time of a datagram it took

	// Pairings that are evidence for the datagrams before them in the
	// ring (see twinGrace): each is later in the ring, and paired later,
	// than the one before it. A ring of heldMax.
	marks       []pairMark
	mark, nmark int
}

// pairMark records that the held datagram seq of an owner paired at a
// time.
type pairMark struct {
	seq uint64
	at  int64
}

// newVerdicts makes the pairing state of owners receive goroutines whose
// rings hold ringFrames frames in all. A twin waits for its ring datagram
// only while that is in a ring, not yet taken: room for as many twins as
// the rings hold frames is room enough.
func newVerdicts(sock twinReader, port uint16, owners, ringFrames int) *verdicts {
	return &verdicts{
		sock:        sock,
		port:        port,
		seed:        maphash.MakeSeed(),
		base:        time.Now(),
		held:        newKeyTable(owners * heldMax),
		twins:       newKeyTable(ringFrames + owners*handoffBatch),
		sockEmptyAt: -1,
		readAt:      -1,
	}
}

// now is the time on the pairing's monotonic clock.
func (v *verdicts) now() int64 { return int64(time.Since(v.base)) }

// owner adds a receive goroutine of family fam and returns its index.
func (v *verdicts) owner(fam uint8) int {
	v.owners = append(v.owners, &twinOwner{
		fam:     fam,
		paired:  make([]bool, heldMax),
		seqs:    make([]uint64, heldMax),
		marks:   make([]pairMark, heldMax),
		emptyAt: -1,
	})
	return len(v.owners) - 1
}

// pairTime is the receive time a datagram pairs on: rx, the kernel's, or
// 0 for one that came in fragments. For those the kernel's time is its
// reassembly queue's, which a duplicate fragment can leave other than
// that of the fragment that completed the datagram; they pair on the
// rest of the key, in the order they came.
func pairTime(rx int64, fragmented bool) int64 {
	if fragmented {
		return 0
	}
	return rx
}

// room reports whether n more twins may be read from the socket. Twins
// wait in the table for ring datagrams not yet taken, or whose ring copy
// was lost, until a sweep; the socket's queue keeps the rest. Only a
// receive goroutine that can take no more ring datagrams until some of
// those it holds pair makes room by dropping the oldest twins. Called with
// mu held.
func (v *verdicts) room(n int) bool {
	return v.evict || v.twins.room() >= n
}

// twin takes one twin read from the socket at time at (wall on the
// wall clock), received by the kernel at rx: it pairs it with the ring
// datagram it stands for, or keeps it for one not yet taken. Called with
// mu held.
func (v *verdicts) twin(k twinKey, rx int64, fragmented bool, at, wall int64, fam uint8) {
	ts := pairTime(rx, fragmented)
	if e, ok := v.held.take(k, ts); ok {
		v.pair(e.ref, at)
		return
	}
	if v.twins.full() {
		v.twins.remove(v.twins.oldest)
		v.socketOnly.Add(1)
	}
	v.twins.add(k, ts, at, wall, rx, fam, 0)
}

// pair marks held datagram ref paired at time at. Called with mu held.
func (v *verdicts) pair(ref int32, at int64) {
	o := v.owners[ref>>16]
	slot := ref & 0xffff
	o.paired[slot] = true
	v.pairs++
	seq := o.seqs[slot]
	if o.nmark > 0 && o.marks[(o.mark+o.nmark-1)%len(o.marks)].seq >= seq {
		return // an earlier mark says more
	}
	if o.nmark == len(o.marks) {
		o.mark, o.nmark = (o.mark+1)%len(o.marks), o.nmark-1
	}
	o.marks[(o.mark+o.nmark)%len(o.marks)] = pairMark{seq, at}
	o.nmark++
}

// sweep counts the twins whose ring datagram cannot come any more. The
// datagram reaches its ring within microseconds of its twin reaching the
// socket, before or after it (twinGrace is far more). So once every
// receive goroutine of the family has found its ring empty twinGrace after
// the twin was read, or taken a datagram the kernel received twinGrace
// after that (and so wrote to the ring after it), or one received twinLate
// after the twin (longer than any CPU's backlog holds a datagram back),
// the datagram was taken and dropped, or never reached the ring because it
// was full. A goroutine asleep in the poller has its ring looked at here:
// it may sleep for long. Called with mu held.
func (v *verdicts) sweep() {
	if v.twins.oldest < 0 {
		return
	}
	now := v.now() // before the look at the rings
	for _, o := range v.owners {
		if o.asleep && !o.ready() {
			o.emptyAt = now
		}
	}
	for v.twins.oldest >= 0 {
		e := v.twins.entry(v.twins.oldest)
		for _, o := range v.owners {
			if o.fam == e.fam && o.emptyAt < e.at+int64(twinGrace) &&
				o.lastTS < e.wall+int64(twinGrace) && o.lastTS < e.rx+int64(twinLate) {
				return
			}
		}
		v.twins.remove(v.twins.oldest)
		v.socketOnly.Add(1)
	}
}

// waiting reports whether twins of family fam wait for their ring
// datagram. Called with mu held.
func (v *verdicts) waiting(fam uint8) bool {
	for i := v.twins.oldest; i >= 0; i = v.twins.entry(i).newer {
		if v.twins.entry(i).fam == fam {
			return true
		}
	}
	return false
}

// refused reports whether owner o's held datagram seq, taken at time at,
// has no twin to wait for (see twinGrace). Marks before it are dropped
// as they are passed: the datagrams are asked about in ring order. Called
// with mu held.
func (v *verdicts) refused(o *twinOwner, seq uint64, at int64) bool {
	if v.sockEmptyAt >= at+int64(twinGrace) {
		return true
	}
	for o.nmark > 0 && o.marks[o.mark].seq <= seq {
		o.mark, o.nmark = (o.mark+1)%len(o.marks), o.nmark-1
	}
	return o.nmark > 0 && v.readAt >= o.marks[o.mark].at+int64(twinGrace)
}

// noteDrops reads the socket's count of dropped datagrams, noting when it
// grew. It is read whenever ring datagrams wait for their twins, and
// before a receive goroutine sleeps, so that drops are known close to
// when they happened. Called with mu held.
func (v *verdicts) noteDrops() {
	if d := v.sock.drops(); d > v.dropsSeen {
		v.dropsSeen = d
		v.dropsWall = time.Now().UnixNano()
	}
}

// refusal returns the drop verdict of a ring datagram without twin, which
// the kernel received at ts: the kernel refused it, unless the socket
// dropped datagrams for want of room that no other datagram without twin
// accounts for, and was seen to after ts (its twin would have been
// dropped then). The socket's count includes the datagrams that failed
// its checksum, which the ring dropped and counted already; the balance
// is taken whole each time, as the ring may count one after the socket
// did. Called with mu held.
func (v *verdicts) refusal(ts int64) verdict {
	v.noteDrops()
	if v.dropsSeen > v.checksumDrops.Load()+v.overflowed && ts <= v.dropsWall {
		v.overflowed++
		return dropKernel
	}
	return dropRejected
}

// heldPacket is a ring datagram decoded and waiting for its twin.
type heldPacket[T any] struct {
	pkt     Packet[T]
	counted *atomic.Uint64 // as in handler.counted
	at, ts  int64          // taken, on the pairing clock; received, the kernel time
	seq     uint64         // its place in the ring's order
	entry   int32          // in verdicts.held; -1 once paired
	live    bool
}

// kernelVerdict is a receive goroutine's part of kernel-verdict mode: the
// datagrams it holds, in ring order.
type kernelVerdict[T any] struct {
	v     *verdicts
	id    int
	own   *twinOwner
	slots []heldPacket[T]
	head  int
	count int    // slots from head, live or not
	seq   uint64 // of the last datagram held
}

func newKernelVerdict[T any](v *verdicts, fam uint8) *kernelVerdict[T] {
	id := v.owner(fam)
	return &kernelVerdict[T]{v: v, id: id, own: v.owners[id], slots: make([]heldPacket[T], heldMax)}
}

// hold takes the Packet just decoded, the next of the batch, out of the
// batch until its twin comes. payload is the datagram's payload.
func (h *handler[T]) hold(ctx context.Context, payload []byte) error {
	kv := h.kv
	pkt, counted := &h.batch[h.n], h.counted[h.n]
	k := makeTwinKey(kv.v.seed, pkt.Header.Src, pkt.Header.Dst, len(payload), payload)
	rx := pkt.Header.Time.UnixNano()
	ts := pairTime(rx, pkt.Header.Fragments > 1 || slices.Contains(pkt.Header.ExtHeaders, nhFragment))
	if kv.count == len(kv.slots) {
		// Full: make room, which may use the batch.
		p := *pkt
		*pkt = Packet[T]{}
		for kv.count == len(kv.slots) {
			err := h.settleTwins(ctx, -1)
			if err == nil && kv.count == len(kv.slots) {
				time.Sleep(twinPoll)
				err = ctx.Err()
			}
			if err != nil {
				h.counts.pending.Add(^uint64(0))
				h.counts.abandoned.Add(1)
				return err
			}
		}
		h.batch[h.n] = p
		pkt = &h.batch[h.n]
	}
	i := (kv.head + kv.count) % len(kv.slots)
	kv.count++
	kv.seq++
	s := &kv.slots[i]
	s.pkt, s.counted, s.ts, s.seq, s.live = *pkt, counted, rx, kv.seq, true
	*pkt = Packet[T]{}
	v := kv.v
	s.at = v.now()
	v.mu.Lock()
	kv.own.lastTS = max(kv.own.lastTS, rx)
	kv.own.seqs[i] = kv.seq
	if _, ok := v.twins.take(k, ts); ok {
		s.entry = -1
		v.pair(int32(kv.id<<16|i), s.at)
	} else {
		s.entry = v.held.add(k, ts, s.at, 0, rx, h.fam, int32(kv.id<<16|i))
	}
	v.mu.Unlock()
	if kv.count%settleHeld == 0 {
		return h.settleTwins(ctx, -1)
	}
	return nil
}

// settleTwins reads the twins waiting on the socket, then moves the held
// datagrams whose twin came to the batch, in ring order, and drops those
// the kernel refused. ringEmptyAt, unless -1, is a time just before which
// the goroutine found its ring empty. It hands the batch over whenever it
// fills, and returns an error only when ctx is done.
func (h *handler[T]) settleTwins(ctx context.Context, ringEmptyAt int64) error {
	kv := h.kv
	v := kv.v
	for {
		v.mu.Lock()
		if ringEmptyAt >= 0 {
			kv.own.emptyAt = ringEmptyAt
		}
		v.evict = kv.count == len(kv.slots)
		if v.held.len() > 0 {
			v.noteDrops()
		}
		v.sock.readTwins(v)
		v.sweep()
		more := h.collect()
		v.mu.Unlock()
		if !more && h.n < len(h.batch) {
			return nil
		}
		if err := h.flush(ctx); err != nil {
			return err
		}
	}
}

// collect moves paired datagrams to the batch and drops refused ones; it
// reports whether it stopped for want of room in the batch. Called with
// mu held.
func (h *handler[T]) collect() (more bool) {
	kv := h.kv
	v := kv.v
	for j := 0; j < kv.count; j++ {
		i := (kv.head + j) % len(kv.slots)
		s := &kv.slots[i]
		if !s.live {
			continue
		}
		switch {
		case kv.own.paired[i]:
			if h.n == len(h.batch) {
				more = true
				break
			}
			h.batch[h.n], h.counted[h.n] = s.pkt, s.counted
			h.n++
			kv.own.paired[i] = false
		case v.refused(kv.own, s.seq, s.at):
			v.held.remove(s.entry)
			h.counts.pending.Add(^uint64(0))
			h.counts.drops[v.refusal(s.ts)].Add(1)
		default:
			continue
		}
		if more {
			break
		}
		*s = heldPacket[T]{}
	}
	for kv.count > 0 && !kv.slots[kv.head].live {
		kv.head = (kv.head + 1) % len(kv.slots)
		kv.count--
	}
	return more
}

// twinsWaiting reports whether twins of the goroutine's family wait for
// their ring datagram.
func (h *handler[T]) twinsWaiting() bool {
	v := h.kv.v
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.waiting(h.fam)
}

// drainTwins reads, before the goroutine sleeps, the twins left on the
// socket though no ring datagram waits for them: those of datagrams the
// ring lost, or never sees (looped-back multicast). Left there they would
// fill the socket's buffer, and the kernel would drop the twins of the
// datagrams to come.
func (h *handler[T]) drainTwins() {
	v := h.kv.v
	v.mu.Lock()
	v.noteDrops()
	v.evict, v.drain = false, true
	v.sock.readTwins(v)
	v.drain = false
	v.sweep()
	v.mu.Unlock()
}

// sleeping notes that the goroutine waits in the poller for its ring, or
// has stopped waiting: while it waits, other goroutines look at its ring
// when they sweep.
func (h *handler[T]) sleeping(on bool) {
	v := h.kv.v
	v.mu.Lock()
	h.kv.own.asleep = on
	v.mu.Unlock()
}

// abandonHeld counts what the goroutine still holds as abandoned: the
// stream has ended.
func (h *handler[T]) abandonHeld() {
	kv := h.kv
	v := kv.v
	v.mu.Lock()
	defer v.mu.Unlock()
	for j := 0; j < kv.count; j++ {
		i := (kv.head + j) % len(kv.slots)
		s := &kv.slots[i]
		if !s.live {
			continue
		}
		if kv.own.paired[i] {
			kv.own.paired[i] = false
		} else {
			v.held.remove(s.entry)
		}
		h.counts.pending.Add(^uint64(0))
		h.counts.abandoned.Add(1)
		*s = heldPacket[T]{}
	}
	kv.head, kv.count = 0, 0
}
