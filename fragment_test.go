package udpstream

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// The fragments in these tests are real packets: a reasmSent datagram is
// built and cut the way a sender's IP layer does it, and every fragment
// goes through classify to become the fragInfo the stream hands over.
// Checksums come from reasmSum, written out from RFC 1071, so that the
// fixtures do not lean on the code they test.

const reasmPort = 4242

var (
	reasmSrc4  = netip.MustParseAddr("203.0.113.5")
	reasmSrc4b = netip.MustParseAddr("203.0.113.6")
	reasmDst4  = netip.MustParseAddr("198.51.100.9")
	reasmSrc6  = netip.MustParseAddr("2001:db8:1::5")
	reasmSrc6b = netip.MustParseAddr("2001:db8:1::6")
	reasmDst6  = netip.MustParseAddr("2001:db8:2::9")
	reasmT0    = time.Unix(1_700_000_000, 0)
)

// reasmSent is one UDP datagram as its sender built it.
type reasmSent struct {
	version      uint8
	src, dst     netip.Addr
	sport, dport uint16
	id           uint32
	ttl, tos     uint8
	df           bool
	opts         []byte  // IPv4 options; only the first fragment carries them
	exts         []uint8 // IPv6 extension headers before the Fragment header
	extLens      []int   // their lengths in bytes, multiples of 8
	payload      []byte
	udp          []byte // UDP header and payload, checksum set
}

func newReasmSent(version uint8, src, dst netip.Addr, id uint32, payload []byte) *reasmSent {
	s := &reasmSent{version: version, src: src, dst: dst, sport: 5353, dport: reasmPort,
		id: id, ttl: 61, tos: 0x2e, payload: payload}
	s.seal()
	return s
}

// seal builds the UDP segment with its checksum over the pseudo-header.
func (s *reasmSent) seal() {
	u := make([]byte, 8+len(s.payload))
	binary.BigEndian.PutUint16(u[0:], s.sport)
	binary.BigEndian.PutUint16(u[2:], s.dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], s.payload)
	var pseudo []byte
	pseudo = append(pseudo, s.src.AsSlice()...)
	pseudo = append(pseudo, s.dst.AsSlice()...)
	if s.version == 4 {
		pseudo = append(pseudo, 0, protoUDP, byte(len(u)>>8), byte(len(u)))
	} else {
		pseudo = append(pseudo, 0, 0, byte(len(u)>>8), byte(len(u)), 0, 0, 0, protoUDP)
	}
	c := ^refSum(0, append(pseudo, u...))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	s.udp = u
}

// v4Header is the IPv4 header of a packet carrying n bytes at offset off
// of the UDP segment.
func (s *reasmSent) v4Header(off, n int, more, withOpts bool) []byte {
	hl := 20
	if withOpts {
		hl += len(s.opts)
	}
	h := make([]byte, hl)
	h[0] = 0x40 | byte(hl/4)
	h[1] = s.tos
	binary.BigEndian.PutUint16(h[2:], uint16(hl+n))
	binary.BigEndian.PutUint16(h[4:], uint16(s.id))
	fo := uint16(off / 8)
	if s.df {
		fo |= 0x4000
	}
	if more {
		fo |= 0x2000
	}
	binary.BigEndian.PutUint16(h[6:], fo)
	h[8] = s.ttl
	h[9] = protoUDP
	copy(h[12:], s.src.AsSlice())
	copy(h[16:], s.dst.AsSlice())
	if withOpts {
		copy(h[20:], s.opts)
	}
	binary.BigEndian.PutUint16(h[10:], ^refSum(0, h))
	return h
}

// v6Header is the IPv6 header and the extension headers before the
// Fragment header, for a payload of plen bytes.
func (s *reasmSent) v6Header(plen int) []byte {
	h := make([]byte, 40)
	binary.BigEndian.PutUint32(h, 6<<28|uint32(s.tos)<<20|0x12345)
	binary.BigEndian.PutUint16(h[4:], uint16(plen))
	h[7] = s.ttl
	copy(h[8:], s.src.AsSlice())
	copy(h[24:], s.dst.AsSlice())
	prev := 6 // where the next-header field to fill is
	for i, typ := range s.exts {
		h[prev] = typ
		start := len(h)
		e := make([]byte, s.extLens[i])
		e[1] = byte(len(e)/8 - 1)
		if typ == nhRouting {
			e[2] = 253 // experimental type; segments left 0
		} else {
			// PadN, behind an option to skip where the header is
			// longer than 8: Linux refuses more than 7 bytes of
			// padding in a row.
			pad := 2
			if len(e) > 8 {
				e[2], e[3] = 0x1e, byte(len(e)-10)
				pad = len(e) - 6
			}
			e[pad], e[pad+1] = 1, byte(len(e)-pad-2)
		}
		h = append(h, e...)
		prev = start
	}
	h[prev] = nhFragment
	return h
}

// fragment is the packet carrying [off, off+n) of the UDP segment.
func (s *reasmSent) fragment(off, n int, more bool) []byte {
	data := s.udp[off : off+n]
	if s.version == 4 {
		return append(s.v4Header(off, n, more, off == 0), data...)
	}
	head := s.v6Header(0)
	fh := make([]byte, 8)
	fh[0] = protoUDP
	fo := uint16(off)
	if more {
		fo |= 1
	}
	binary.BigEndian.PutUint16(fh[2:], fo)
	binary.BigEndian.PutUint32(fh[4:], s.id)
	b := append(append(head, fh...), data...)
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
	return b
}

// split cuts the datagram into fragments of size bytes of data (a
// multiple of 8), the last one taking what is left.
func (s *reasmSent) split(size int) [][]byte {
	var fs [][]byte
	for off := 0; off < len(s.udp); off += size {
		n := min(size, len(s.udp)-off)
		fs = append(fs, s.fragment(off, n, off+n < len(s.udp)))
	}
	return fs
}

// whole is the datagram the reassembler must output, byte for byte.
func (s *reasmSent) whole() []byte {
	if s.version == 4 {
		return append(s.v4Header(0, len(s.udp), false, true), s.udp...)
	}
	head := s.v6Header(0)
	fh := make([]byte, 8)
	fh[0] = protoUDP
	binary.BigEndian.PutUint32(fh[4:], s.id)
	b := append(append(head, fh...), s.udp...)
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
	return b
}

// reasmFeed classifies one fragment frame and offers it to r.
func reasmFeed(t testing.TB, r *reassembler, frame []byte, now time.Time) ([]byte, int, verdict) {
	t.Helper()
	var p parsed
	if v := classify(frame, frame[0]>>4, reasmPort, 0, &p); v != fragment {
		t.Fatalf("classify of a test fragment: verdict %v, want fragment", v)
	}
	return r.add(p.Version, p.Src.Addr(), p.Dst.Addr(), &p.frag, now, nil)
}

// reasmFeedAll offers frames in order; every one but the last must be
// absorbed and the last must complete the datagram, which is returned.
func reasmFeedAll(t testing.TB, r *reassembler, frames [][]byte, now time.Time) ([]byte, int) {
	t.Helper()
	for i, f := range frames {
		whole, n, v := reasmFeed(t, r, f, now)
		if i < len(frames)-1 {
			if whole != nil || v != fragment {
				t.Fatalf("fragment %d of %d: verdict %v (whole %v), want fragment", i+1, len(frames), v, whole != nil)
			}
			continue
		}
		if whole == nil || v != deliver {
			t.Fatalf("last fragment: verdict %v, want deliver", v)
		}
		return whole, n
	}
	return nil, 0
}

// reasmCheckWhole checks a reassembled datagram against what was sent, the
// way the stream uses it: re-classified as a whole packet.
func reasmCheckWhole(t testing.TB, s *reasmSent, whole []byte, frags, wantFrags int) {
	t.Helper()
	if want := s.whole(); !bytes.Equal(whole, want) {
		i := 0
		for i < min(len(whole), len(want)) && whole[i] == want[i] {
			i++
		}
		t.Fatalf("reassembled datagram: %d bytes, want %d; first difference at byte %d", len(whole), len(want), i)
	}
	if frags != wantFrags {
		t.Errorf("frags = %d, want %d", frags, wantFrags)
	}
	var p parsed
	if v := classify(whole, s.version, reasmPort, 0, &p); v != deliver {
		t.Fatalf("re-classify: verdict %v, want deliver", v)
	}
	h := p.Header
	if h.TTL != s.ttl || h.TOS != s.tos || h.ID != s.id || h.DF != s.df || h.MF {
		t.Errorf("header TTL %d TOS %#x ID %#x DF %v MF %v, want %d %#x %#x %v false",
			h.TTL, h.TOS, h.ID, h.DF, h.MF, s.ttl, s.tos, s.id, s.df)
	}
	if h.Src != netip.AddrPortFrom(s.src, s.sport) || h.Dst != netip.AddrPortFrom(s.dst, s.dport) {
		t.Errorf("addresses %v -> %v", h.Src, h.Dst)
	}
	if !bytes.Equal(p.udp[8:], s.payload) || int(h.UDPLength) != len(s.udp) {
		t.Errorf("payload differs from what was sent")
	}
	if s.version == 4 && !bytes.Equal(h.Options, s.opts) {
		t.Errorf("options % x, want % x", h.Options, s.opts)
	}
	if s.version == 6 {
		if want := append(slices.Clone(s.exts), nhFragment); !slices.Equal(p.ext[:p.extN], want) {
			t.Errorf("extension headers %v, want %v", p.ext[:p.extN], want)
		}
	}
}

// reasmInvariants checks the reassembler's books: the charges add up, the
// lists and maps agree, and the memory cap holds.
func reasmInvariants(r *reassembler) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.used+r.idle > r.cfg.maxBytes {
		return fmt.Errorf("used %d + idle %d > maxBytes %d", r.used, r.idle, r.cfg.maxBytes)
	}
	idle := 0
	for i, l := range r.freeBufs {
		for _, b := range l {
			if cap(b) != bufClasses[i] {
				return fmt.Errorf("free buffer of %d bytes in class %d", cap(b), bufClasses[i])
			}
			idle += cap(b)
		}
	}
	idle += len(r.freeChunks) * chunkSize
	for _, d := range r.freeDatagrams {
		idle += recordSize(d)
	}
	if idle != r.idle {
		return fmt.Errorf("idle %d, free lists hold %d", r.idle, idle)
	}
	used, n := 0, 0
	perSource := map[*fragSource][2]int{}
	var prev *datagram
	for d := r.oldest; d != nil; d = d.next {
		if d.prev != prev {
			return fmt.Errorf("age list broken")
		}
		prev = d
		n++
		if r.datagrams[d.key] != d {
			return fmt.Errorf("datagram not in the map")
		}
		want := recordSize(d) + d.nchunks*chunkSize + cap(d.head)
		for _, k := range d.kept {
			want += cap(k.ip)
		}
		if d.cost != want {
			return fmt.Errorf("cost %d, want %d", d.cost, want)
		}
		if r.cfg.keepFragments && !d.dead && len(d.kept) != len(d.ranges) || (d.dead || !r.cfg.keepFragments) && len(d.kept) != 0 {
			return fmt.Errorf("%d fragments kept, %d ranges held", len(d.kept), len(d.ranges))
		}
		held := 0
		for _, c := range d.chunks {
			if c != nil {
				held++
			}
		}
		if held != d.nchunks {
			return fmt.Errorf("%d chunks held, %d counted", held, d.nchunks)
		}
		if d.dead && (held != 0 || d.head != nil || len(d.kept) != 0) {
			return fmt.Errorf("tombstone holds data")
		}
		if !d.dead && (d.head != nil) != (d.headLen != 0) {
			return fmt.Errorf("head %d bytes, headLen %d", len(d.head), d.headLen)
		}
		if len(d.ranges) > r.cfg.maxFragments {
			return fmt.Errorf("%d fragments > %d", len(d.ranges), r.cfg.maxFragments)
		}
		sum, last := 0, 0
		for _, g := range d.ranges {
			if int(g.off) < last || g.end <= g.off {
				return fmt.Errorf("ranges overlap or unsorted: %v", d.ranges)
			}
			last = int(g.end)
			sum += int(g.end - g.off)
			for w := int(g.off) / chunkSize; !d.dead && w <= int(g.end-1)/chunkSize; w++ {
				if d.chunks[w] == nil {
					return fmt.Errorf("data at %d without a chunk", w*chunkSize)
				}
			}
		}
		if sum != d.received || last != d.extent {
			return fmt.Errorf("received %d extent %d, ranges say %d %d", d.received, d.extent, sum, last)
		}
		used += d.cost
		c := perSource[d.src]
		perSource[d.src] = [2]int{c[0] + 1, c[1] + d.cost}
	}
	if prev != r.newest || n != len(r.datagrams) {
		return fmt.Errorf("list has %d datagrams, map %d", n, len(r.datagrams))
	}
	if used != r.used {
		return fmt.Errorf("used %d, datagrams cost %d", r.used, used)
	}
	if len(perSource) != len(r.sources) {
		return fmt.Errorf("%d sources in use, %d in the map", len(perSource), len(r.sources))
	}
	for s, c := range perSource {
		if r.sources[s.addr] != s || s.count != c[0] || s.bytes != c[1] {
			return fmt.Errorf("source %v: count %d bytes %d, want %d %d", s.addr, s.count, s.bytes, c[0], c[1])
		}
		if s.count > r.cfg.maxPerSource || s.bytes > r.cfg.maxSourceBytes {
			return fmt.Errorf("source %v over its limits: %d datagrams, %d bytes", s.addr, s.count, s.bytes)
		}
	}
	return nil
}

func reasmMustHold(t testing.TB, r *reassembler) {
	t.Helper()
	if err := reasmInvariants(r); err != nil {
		t.Fatal(err)
	}
}

func reasmWantDrops(t testing.TB, r *reassembler, timeouts, evictions uint64) {
	t.Helper()
	if gt, ge := r.drops(); gt != timeouts || ge != evictions {
		t.Errorf("drops: %d timeouts, %d evictions; want %d, %d", gt, ge, timeouts, evictions)
	}
}

// reasmCases are the datagrams the ordering tests reassemble.
func reasmCases() []struct {
	name string
	sent *reasmSent
	size int // data bytes per fragment
} {
	opt4 := newReasmSent(4, reasmSrc4, reasmDst4, 0xbeef, payloadBytes(3000))
	opt4.opts = []byte{0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00} // router alert, NOPs, EOL
	opt4.df = true
	maxOpt4 := newReasmSent(4, reasmSrc4, reasmDst4, 7, payloadBytes(200))
	maxOpt4.opts = bytes.Repeat([]byte{1}, 40)
	ext6 := newReasmSent(6, reasmSrc6, reasmDst6, 0xdeadbeef, payloadBytes(5000))
	ext6.exts, ext6.extLens = []uint8{nhHopByHop, nhDestOptions}, []int{8, 16}
	rt6 := newReasmSent(6, reasmSrc6, reasmDst6, 1, payloadBytes(2500))
	rt6.exts, rt6.extLens = []uint8{nhHopByHop, nhRouting}, []int{8, 24}
	return []struct {
		name string
		sent *reasmSent
		size int
	}{
		{"v4 3 fragments", newReasmSent(4, reasmSrc4, reasmDst4, 0x1234, payloadBytes(3000)), 1480},
		{"v4 options", opt4, 1200},
		{"v4 40 bytes of options", maxOpt4, 64},
		{"v4 small pieces", newReasmSent(4, reasmSrc4, reasmDst4, 9, payloadBytes(500)), 16},
		{"v4 largest datagram", newReasmSent(4, reasmSrc4, reasmDst4, 10, payloadBytes(65535-28)), 1480},
		{"v6 3 fragments", newReasmSent(6, reasmSrc6, reasmDst6, 0x11223344, payloadBytes(3000)), 1232},
		{"v6 hop-by-hop and destination options", ext6, 1224},
		{"v6 routing header", rt6, 512},
		{"v6 largest datagram", newReasmSent(6, reasmSrc6, reasmDst6, 12, payloadBytes(65535-16)), 1232},
	}
}

// payloadBytes is a deterministic payload of n bytes.
func payloadBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*131 + i>>8 + 7)
	}
	return b
}

// TestReassembleOrders reassembles each datagram in order, in reverse and
// shuffled, and checks the output byte for byte and as classify reads it.
func TestReassembleOrders(t *testing.T) {
	for _, c := range reasmCases() {
		frames := c.sent.split(c.size)
		orders := map[string][][]byte{
			"in order": frames,
			"reverse":  reasmReversed(frames),
		}
		rng := rand.New(rand.NewPCG(1, uint64(len(frames))))
		for i := range 5 {
			sh := slices.Clone(frames)
			rng.Shuffle(len(sh), func(a, b int) { sh[a], sh[b] = sh[b], sh[a] })
			orders[fmt.Sprintf("shuffled %d", i)] = sh
		}
		for name, order := range orders {
			t.Run(c.name+"/"+name, func(t *testing.T) {
				r := newReassembler(reassemblyConfig{maxFragments: 1024})
				whole, n := reasmFeedAll(t, r, order, reasmT0)
				reasmCheckWhole(t, c.sent, whole, n, len(frames))
				r.release(whole, nil)
				if u := r.inUse(); u != 0 {
					t.Errorf("inUse = %d after completion, want 0", u)
				}
				reasmWantDrops(t, r, 0, 0)
				reasmMustHold(t, r)
			})
		}
	}
}

// reasmReversed returns a reversed copy of frames.
func reasmReversed(frames [][]byte) [][]byte {
	r := slices.Clone(frames)
	slices.Reverse(r)
	return r
}

// TestReassembleDuplicates sends every fragment twice: the copies are
// ignored, and the datagram counts its fragments once.
func TestReassembleDuplicates(t *testing.T) {
	for _, s := range []*reasmSent{
		newReasmSent(4, reasmSrc4, reasmDst4, 1, payloadBytes(100)),
		newReasmSent(6, reasmSrc6, reasmDst6, 1, payloadBytes(100)),
	} {
		r := newReassembler(reassemblyConfig{})
		frames := s.split(40)
		var twice [][]byte
		for _, f := range frames {
			twice = append(twice, f, f)
		}
		// The last fragment's copy would start a new datagram: leave it out.
		twice = twice[:len(twice)-1]
		whole, n := reasmFeedAll(t, r, twice, reasmT0)
		reasmCheckWhole(t, s, whole, n, len(frames))
		reasmWantDrops(t, r, 0, 0)
		reasmMustHold(t, r)
	}
}

// TestReassembleConflictingDuplicate sends a fragment twice with different
// bytes: two datagrams share the key, and neither may be delivered.
func TestReassembleConflictingDuplicate(t *testing.T) {
	for _, v := range []uint8{4, 6} {
		s := reasmSimple(v, 1, 100)
		frames := s.split(40)
		evil := bytes.Clone(frames[1])
		evil[len(evil)-1] ^= 0xff
		r := newReassembler(reassemblyConfig{})
		for i, f := range [][]byte{frames[0], frames[1], evil} {
			_, _, got := reasmFeed(t, r, f, reasmT0)
			want := fragment
			if i == 2 {
				want = dropFragOverlap
			}
			if got != want {
				t.Fatalf("v%d fragment %d: verdict %v, want %v", v, i, got, want)
			}
		}
		if _, _, got := reasmFeed(t, r, frames[2], reasmT0); got != fragment {
			t.Errorf("v%d: the rest after the drop: verdict %v, want fragment (absorbed)", v, got)
		}
		reasmMustHold(t, r)
	}
}

// reasmSimple is a plain datagram of the family with n payload bytes.
func reasmSimple(version uint8, id uint32, n int) *reasmSent {
	if version == 4 {
		return newReasmSent(4, reasmSrc4, reasmDst4, id, payloadBytes(n))
	}
	return newReasmSent(6, reasmSrc6, reasmDst6, id, payloadBytes(n))
}

// TestReassembleOverlap sends a fragment that overlaps another: the whole
// datagram is dropped, once (RFC 5722 for IPv6; the same rule for IPv4,
// which keeps an attacker from choosing which copy of a byte counts). The
// rest of its fragments are absorbed by a tombstone without being counted
// again, and once they have all arrived the key is free for a new datagram.
func TestReassembleOverlap(t *testing.T) {
	for _, v := range []uint8{4, 6} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			s := reasmSimple(v, 77, 100) // 108 bytes of UDP: 0-32, 32-64, 64-96, 96-108
			frames := s.split(32)
			// Bytes 16-48, which overlaps the first two fragments.
			overlap := s.fragment(16, 32, true)
			r := newReassembler(reassemblyConfig{})
			steps := []struct {
				frame []byte
				want  verdict
			}{
				{frames[0], fragment},
				{overlap, dropFragOverlap},
				{frames[1], fragment}, // absorbed
				{overlap, fragment},   // the attacker again: absorbed, not counted
				{frames[2], fragment},
				{frames[3], fragment}, // the datagram's last piece: the tombstone goes
			}
			for i, st := range steps {
				whole, _, got := reasmFeed(t, r, st.frame, reasmT0)
				if got != st.want || whole != nil {
					t.Fatalf("step %d: verdict %v, want %v", i, got, st.want)
				}
				reasmMustHold(t, r)
			}
			if u, n := r.inUse(), len(r.datagrams); u != 0 || n != 0 {
				t.Errorf("after the last piece: inUse %d, %d datagrams; want 0, 0", u, n)
			}
			reasmWantDrops(t, r, 0, 0)
			// The same identification reused: a new datagram.
			whole, n := reasmFeedAll(t, r, frames, reasmT0.Add(time.Second))
			reasmCheckWhole(t, s, whole, n, len(frames))
		})
	}
}

// TestReassembleOverlapTombstoneExpires: a tombstone whose datagram never
// completes goes at the timeout, silently (it was counted when dropped).
func TestReassembleOverlapTombstoneExpires(t *testing.T) {
	s := reasmSimple(6, 5, 100)
	frames := s.split(32)
	r := newReassembler(reassemblyConfig{timeout: time.Second})
	reasmFeed(t, r, frames[1], reasmT0)
	if _, _, v := reasmFeed(t, r, s.fragment(40, 16, true), reasmT0); v != dropFragOverlap {
		t.Fatalf("overlap: verdict %v", v)
	}
	if u := r.inUse(); u == 0 || u > datagramOverhead+initialRanges*rangeSize {
		t.Errorf("tombstone charged %d bytes, want its record only", u)
	}
	r.expire(reasmT0.Add(time.Second))
	if u, n := r.inUse(), len(r.datagrams); u != 0 || n != 0 {
		t.Errorf("after timeout: inUse %d, %d datagrams; want 0, 0", u, n)
	}
	reasmWantDrops(t, r, 0, 0)
}

// TestReassembleTimeout loses one fragment: the datagram is dropped at the
// timeout, counted from its first fragment, and its memory freed.
func TestReassembleTimeout(t *testing.T) {
	for _, v := range []uint8{4, 6} {
		s := reasmSimple(v, 3, 4000)
		frames := s.split(1232)
		r := newReassembler(reassemblyConfig{timeout: 30 * time.Second})
		for i, f := range frames {
			if i == 1 {
				continue // lost
			}
			if _, _, got := reasmFeed(t, r, f, reasmT0.Add(time.Duration(i)*time.Second)); got != fragment {
				t.Fatalf("fragment %d: verdict %v", i, got)
			}
		}
		if r.inUse() == 0 {
			t.Fatalf("nothing held while waiting")
		}
		r.expire(reasmT0.Add(30*time.Second - 1))
		reasmWantDrops(t, r, 0, 0)
		if len(r.datagrams) != 1 {
			t.Fatalf("expired early")
		}
		r.expire(reasmT0.Add(30 * time.Second))
		reasmWantDrops(t, r, 1, 0)
		if u := r.inUse(); u != 0 {
			t.Errorf("inUse = %d after timeout, want 0", u)
		}
		// The missing piece, late: it begins a datagram of its own, which
		// add itself expires later.
		if _, _, got := reasmFeed(t, r, frames[1], reasmT0.Add(31*time.Second)); got != fragment {
			t.Errorf("late fragment: verdict %v", got)
		}
		reasmFeed(t, r, frames[0], reasmT0.Add(61*time.Second))
		reasmWantDrops(t, r, 2, 0)
		reasmMustHold(t, r)
	}
}

// TestReassembleTooManyFragments: a datagram past maxFragments is dropped
// once; one exactly at the limit completes.
func TestReassembleTooManyFragments(t *testing.T) {
	for _, v := range []uint8{4, 6} {
		r := newReassembler(reassemblyConfig{maxFragments: 4})
		ok := reasmSimple(v, 1, 24) // 32 bytes: 4 fragments of 8
		whole, n := reasmFeedAll(t, r, ok.split(8), reasmT0)
		reasmCheckWhole(t, ok, whole, n, 4)

		s := reasmSimple(v, 2, 40) // 48 bytes: 6 fragments of 8
		frames := s.split(8)
		for i, f := range frames {
			_, _, got := reasmFeed(t, r, f, reasmT0)
			want := fragment
			if i == 4 {
				want = dropFragEvicted
			}
			if got != want {
				t.Errorf("v%d fragment %d: verdict %v, want %v", v, i, got, want)
			}
		}
		reasmWantDrops(t, r, 0, 0)
		reasmMustHold(t, r)
	}
}

// TestReassemblePerSource: a source over maxPerSource loses its oldest
// datagram; other sources are untouched.
func TestReassemblePerSource(t *testing.T) {
	r := newReassembler(reassemblyConfig{maxPerSource: 2})
	var ds []*reasmSent
	for id := range uint32(3) {
		ds = append(ds, newReasmSent(4, reasmSrc4, reasmDst4, id, payloadBytes(100)))
	}
	other := newReasmSent(4, reasmSrc4b, reasmDst4, 0, payloadBytes(100))
	otherFrames := other.split(64)
	reasmFeed(t, r, otherFrames[0], reasmT0)
	for i, s := range ds {
		reasmFeed(t, r, s.split(64)[0], reasmT0.Add(time.Duration(i)*time.Millisecond))
	}
	reasmWantDrops(t, r, 0, 1)
	reasmMustHold(t, r)
	for _, s := range ds[1:] {
		whole, _, v := reasmFeed(t, r, s.split(64)[1], reasmT0)
		if v != deliver {
			t.Fatalf("datagram %d: verdict %v, want deliver", s.id, v)
		}
		reasmCheckWhole(t, s, whole, 2, 2)
	}
	whole, _, v := reasmFeed(t, r, otherFrames[1], reasmT0)
	if v != deliver {
		t.Fatalf("other source: verdict %v, want deliver", v)
	}
	reasmCheckWhole(t, other, whole, 2, 2)
	// The evicted datagram's last piece begins a new reassembly.
	if _, _, v := reasmFeed(t, r, ds[0].split(64)[1], reasmT0); v != fragment {
		t.Errorf("evicted datagram's rest: verdict %v, want fragment", v)
	}
	reasmWantDrops(t, r, 0, 1)
}

// reasmFlood returns n random fragments of at most maxData bytes each,
// from sources drawn among nsrc addresses (IPv4 unless v6), as frames
// classify accepts.
func reasmFlood(rng *rand.Rand, n, maxData, nsrc int, v6 bool) [][]byte {
	// A few bodies serve every flood datagram: these never complete, so
	// their UDP checksums do not matter.
	var bodies []*reasmSent
	for _, size := range []int{1, 900, 5000, 20000, 60000} {
		bodies = append(bodies, newReasmSent(4, reasmSrc4, reasmDst4, 0, payloadBytes(size)))
	}
	var out [][]byte
	for len(out) < n {
		k := rng.IntN(nsrc)
		src := netip.AddrFrom4([4]byte{10, byte(k >> 16), byte(k >> 8), byte(k)})
		ver, dst := uint8(4), reasmDst4
		if v6 {
			src = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0xff, 13: byte(k >> 16), 14: byte(k >> 8), 15: byte(k)})
			ver, dst = 6, reasmDst6
		}
		s := *bodies[rng.IntN(len(bodies))]
		s.version, s.src, s.dst, s.id = ver, src, dst, rng.Uint32()
		off := 8 * rng.IntN((len(s.udp)+7)/8)
		nb := min(8*(1+rng.IntN(maxData/8)), len(s.udp)-off)
		if off == 0 && nb >= len(s.udp) {
			continue // not a fragment
		}
		out = append(out, s.fragment(off, nb, off+nb < len(s.udp)))
	}
	return out
}

// TestReassembleMemoryCap floods the reassembler with random fragments
// that never complete, spread between the fragments of a well-formed
// datagram from another source. Memory stays under the cap throughout.
// The good datagram completes when the flood comes from one source or a
// few (each held to its per-source cap, however long the flood lasts), or
// from many sources as long as the flood between its first and last
// fragments is smaller than the cap (the oldest datagrams go first). A
// larger flood from many sources evicts it, and that is counted.
func TestReassembleMemoryCap(t *testing.T) {
	const maxBytes = 512 << 10
	// The most a tiny flood fragment can cost: a record, a fragment list
	// and the two chunks it may straddle.
	perTiny := datagramOverhead + initialRanges*rangeSize + 2*chunkSize
	goodCost := 32 << 10
	under := (maxBytes - goodCost) / perTiny
	for _, tc := range []struct {
		name    string
		flood   int // fragments in all
		maxData int
		nsrc    int
		v6      bool
		survive bool
	}{
		{"one source v4", 20000, 1480, 1, false, true},
		{"one source v6", 20000, 1232, 1, true, true},
		{"three sources v4", 20000, 1480, 3, false, true},
		{"many sources v4 under the cap", under, 64, 1 << 20, false, true},
		{"many sources v6 under the cap", under, 64, 1 << 20, true, true},
		{"many sources v4 over the cap", 4 * under, 1480, 1 << 20, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newReassembler(reassemblyConfig{maxBytes: maxBytes, maxFragments: 200})
			rng := rand.New(rand.NewPCG(7, 9))
			good := reasmSimple(4, 99, 30000)
			if tc.v6 {
				good = reasmSimple(6, 99, 30000)
			}
			frames := good.split(1232)
			flood := reasmFlood(rng, tc.flood, tc.maxData, tc.nsrc, tc.v6)
			now := reasmT0
			peak := 0
			var last verdict
			for i, f := range frames {
				gap := flood[:len(flood)/(len(frames)-i)]
				flood = flood[len(gap):]
				for j, fl := range gap {
					now = now.Add(time.Microsecond)
					if w, _, _ := reasmFeed(t, r, fl, now); w != nil {
						t.Fatalf("the flood completed a datagram")
					}
					r.mu.Lock()
					held := r.used + r.idle
					r.mu.Unlock()
					if held > maxBytes {
						t.Fatalf("holding %d bytes > %d", held, maxBytes)
					}
					if j%64 == 0 {
						reasmMustHold(t, r)
					}
					peak = max(peak, r.inUse())
				}
				var whole []byte
				var n int
				whole, n, last = reasmFeed(t, r, f, now)
				if i < len(frames)-1 && last != fragment {
					t.Fatalf("good fragment %d: verdict %v", i, last)
				}
				if whole != nil {
					reasmCheckWhole(t, good, whole, n, len(frames))
				}
			}
			if tc.survive && last != deliver {
				t.Fatalf("good datagram: verdict %v, want deliver", last)
			}
			if !tc.survive {
				if last == deliver {
					t.Fatalf("good datagram survived a flood over the cap")
				}
				if _, ev := r.drops(); ev == 0 {
					t.Errorf("no evictions counted")
				}
			}
			if peak > maxBytes {
				t.Errorf("peak use %d bytes > %d", peak, maxBytes)
			}
			t.Logf("%d flood fragments, peak %d of %d bytes", tc.flood, peak, maxBytes)
		})
	}
}

// TestReassembleOversizedFragment: a fragment that cannot fit its source's
// cap at all is dropped without disturbing the rest.
func TestReassembleOversizedFragment(t *testing.T) {
	r := newReassembler(reassemblyConfig{maxBytes: 64 << 10, maxSourceBytes: 8 << 10})
	small := newReasmSent(4, reasmSrc4b, reasmDst4, 1, payloadBytes(100))
	reasmFeed(t, r, small.split(64)[0], reasmT0)
	// A jumbo-frame fragment of 8000 bytes needs 8 KiB of chunks alone.
	big := reasmSimple(4, 2, 30000)
	if _, _, v := reasmFeed(t, r, big.fragment(8000, 8000, true), reasmT0); v != dropFragEvicted {
		t.Errorf("oversized: verdict %v, want dropFragEvicted", v)
	}
	// Its datagram was reported: the rest of it is absorbed.
	if _, _, v := reasmFeed(t, r, big.fragment(0, 1480, true), reasmT0); v != fragment {
		t.Errorf("rest of the oversized datagram: verdict %v, want fragment", v)
	}
	whole, n, v := reasmFeed(t, r, small.split(64)[1], reasmT0)
	if v != deliver {
		t.Fatalf("small datagram: verdict %v", v)
	}
	reasmCheckWhole(t, small, whole, n, 2)
	reasmWantDrops(t, r, 0, 0)
	reasmMustHold(t, r)
}

// TestReassembleShortLastFragment: a last fragment may be shorter than 8
// bytes, down to one.
func TestReassembleShortLastFragment(t *testing.T) {
	for _, v := range []uint8{4, 6} {
		for _, tail := range []int{1, 3, 7} {
			s := reasmSimple(v, 8, 16+tail) // 24 bytes then the tail
			r := newReassembler(reassemblyConfig{})
			frames := s.split(24)
			if n := len(frames[1]) - len(frames[0]) + 24; n != tail {
				t.Fatalf("test setup: tail %d", n)
			}
			whole, n := reasmFeedAll(t, r, reasmReversed(frames), reasmT0)
			reasmCheckWhole(t, s, whole, n, 2)
		}
	}
}

// TestReassembleMalformed: fragments that contradict each other about the
// datagram's length drop it, once; the rest of its fragments are absorbed.
func TestReassembleMalformed(t *testing.T) {
	for _, v := range []uint8{4, 6} {
		s := reasmSimple(v, 4, 56) // 64 bytes of UDP
		f := func(off, n int, more bool) []byte { return s.fragment(off, n, more) }
		for _, tc := range []struct {
			name   string
			frames [][]byte
		}{
			{"two last fragments disagree", [][]byte{f(48, 16, false), f(40, 16, false)}},
			{"second last fragment longer", [][]byte{f(32, 16, false), f(48, 16, false)}},
			{"fragment past the end", [][]byte{f(0, 16, true), f(32, 16, false), f(48, 16, true)}},
			{"non-last fragment reaching the end", [][]byte{f(48, 16, false), f(40, 24, true)}},
			{"last fragment before data", [][]byte{f(48, 16, true), f(16, 16, false)}},
			{"last fragment where data ends", [][]byte{f(32, 16, true), f(40, 8, false)}},
			{"same range, more differs", [][]byte{f(32, 16, true), f(32, 16, false)}},
		} {
			t.Run(fmt.Sprintf("v%d %s", v, tc.name), func(t *testing.T) {
				r := newReassembler(reassemblyConfig{})
				for i, fr := range tc.frames {
					_, _, got := reasmFeed(t, r, fr, reasmT0)
					want := fragment
					if i == len(tc.frames)-1 {
						want = dropMalformedFragment
					}
					if got != want {
						t.Fatalf("fragment %d: verdict %v, want %v", i, got, want)
					}
				}
				if _, _, got := reasmFeed(t, r, f(0, 8, true), reasmT0); got != fragment {
					t.Errorf("after the drop: verdict %v, want fragment (absorbed)", got)
				}
				reasmWantDrops(t, r, 0, 0)
				reasmMustHold(t, r)
			})
		}
	}
}

// TestReassembleTooLongWithHead: each fragment fits on its own, but the
// first fragment's longer header makes the datagram overflow its length
// field.
func TestReassembleTooLongWithHead(t *testing.T) {
	s4 := newReasmSent(4, reasmSrc4, reasmDst4, 1, payloadBytes(65515-8))
	s4.opts = bytes.Repeat([]byte{1}, 40)
	s6 := newReasmSent(6, reasmSrc6, reasmDst6, 1, payloadBytes(65527-8))
	s6.exts, s6.extLens = []uint8{nhDestOptions}, []int{16}
	for _, s := range []*reasmSent{s4, s6} {
		// Later fragments without the extension headers, so that each
		// fits on its own.
		plain := *s
		plain.exts, plain.extLens = nil, nil
		for _, firstFirst := range []bool{false, true} {
			r := newReassembler(reassemblyConfig{})
			last := plain.fragment(65480, len(s.udp)-65480, false)
			first := s.fragment(0, 1480, true)
			frames := [][]byte{last, first}
			if firstFirst {
				frames = [][]byte{first, last}
			}
			if _, _, v := reasmFeed(t, r, frames[0], reasmT0); v != fragment {
				t.Fatalf("v%d: verdict %v", s.version, v)
			}
			if _, _, v := reasmFeed(t, r, frames[1], reasmT0); v != dropMalformedFragment {
				t.Errorf("v%d first-first %v: verdict %v, want dropMalformedFragment", s.version, firstFirst, v)
			}
			reasmMustHold(t, r)
		}
	}
}

// TestReassembleBadInput: add never trusts its argument.
func TestReassembleBadInput(t *testing.T) {
	s := reasmSimple(4, 1, 100)
	var p parsed
	if v := classify(s.fragment(0, 64, true), 4, reasmPort, 0, &p); v != fragment {
		t.Fatal(v)
	}
	good := p.frag
	mod := func(f func(fi *fragInfo)) *fragInfo {
		fi := good
		f(&fi)
		return &fi
	}
	for _, tc := range []struct {
		name    string
		version uint8
		f       *fragInfo
	}{
		{"nil", 4, nil},
		{"version 5", 5, &good},
		{"version 0", 0, &good},
		{"no data", 4, mod(func(f *fragInfo) { f.data = nil })},
		{"negative offset", 4, mod(func(f *fragInfo) { f.offset = -8 })},
		{"offset not a multiple of 8", 4, mod(func(f *fragInfo) { f.offset = 12 })},
		{"huge offset", 4, mod(func(f *fragInfo) { f.offset = 1 << 40 })},
		{"past 65535", 4, mod(func(f *fragInfo) { f.offset = 65480 })},
		{"odd non-last length", 4, mod(func(f *fragInfo) { f.data = f.data[:13] })},
		{"short head", 4, mod(func(f *fragInfo) { f.head = f.head[:10] })},
		{"head IHL disagrees", 4, mod(func(f *fragInfo) { f.head = append(slices.Clone(f.head), 0, 0, 0, 0) })},
		{"v4 head as v6", 6, &good},
		{"huge data", 4, mod(func(f *fragInfo) { f.data = make([]byte, 70000) })},
	} {
		r := newReassembler(reassemblyConfig{})
		if w, _, v := r.add(tc.version, reasmSrc4, reasmDst4, tc.f, reasmT0, nil); w != nil || v != dropMalformedFragment {
			t.Errorf("%s: verdict %v, want dropMalformedFragment", tc.name, v)
		}
		if len(r.datagrams) != 0 || r.inUse() != 0 {
			t.Errorf("%s: state kept", tc.name)
		}
	}
}

// TestReassembleKeys: fragments of datagrams that differ in any part of
// the key never mix; IPv6 ignores the Next Header of fragments after the
// first, as RFC 8200 says.
func TestReassembleKeys(t *testing.T) {
	base4 := newReasmSent(4, reasmSrc4, reasmDst4, 5, payloadBytes(100))
	otherDst := newReasmSent(4, reasmSrc4, netip.MustParseAddr("198.51.100.10"), 5, payloadBytes(100))
	otherSrc := newReasmSent(4, reasmSrc4b, reasmDst4, 5, payloadBytes(100))
	base6 := newReasmSent(6, reasmSrc6, reasmDst6, 5, payloadBytes(100))
	all := []*reasmSent{base4, otherDst, otherSrc, base6}
	r := newReassembler(reassemblyConfig{})
	for _, s := range all {
		reasmFeed(t, r, s.split(64)[0], reasmT0)
	}
	// The same identification under another protocol: a key of its own.
	var p parsed
	classify(base4.split(64)[1], 4, reasmPort, 0, &p)
	tcp := p.frag
	tcp.nextHeader = 6
	if w, _, v := r.add(4, reasmSrc4, reasmDst4, &tcp, reasmT0, nil); w != nil || v != fragment {
		t.Fatalf("other protocol: verdict %v", v)
	}
	for _, s := range all {
		last := s.split(64)[1]
		if s == base6 {
			last = bytes.Clone(last)
			last[40] = nhDestOptions // the Fragment header's Next Header
		}
		whole, n, v := reasmFeed(t, r, last, reasmT0)
		if v != deliver {
			t.Fatalf("%v -> %v: verdict %v", s.src, s.dst, v)
		}
		reasmCheckWhole(t, s, whole, n, 2)
		r.release(whole, nil)
	}
	reasmMustHold(t, r)
}

// TestReassembleAtomicFragment: an IPv6 packet with a Fragment header of
// offset 0 and M clear is whole (RFC 6946); classify delivers it without
// the reassembler, with the Fragment header and its identification.
func TestReassembleAtomicFragment(t *testing.T) {
	s := newReasmSent(6, reasmSrc6, reasmDst6, 0xfeedf00d, payloadBytes(300))
	s.exts, s.extLens = []uint8{nhHopByHop}, []int{8}
	pkt := s.whole() // exactly what reassembly outputs: an atomic fragment
	var p parsed
	if v := classify(pkt, 6, reasmPort, 0, &p); v != deliver {
		t.Fatalf("verdict %v, want deliver", v)
	}
	if p.ID != s.id || !slices.Equal(p.ext[:p.extN], []uint8{nhHopByHop, nhFragment}) || !bytes.Equal(p.udp, s.udp) {
		t.Errorf("ID %#x ext %v: want %#x [0 44] and the UDP datagram", p.ID, p.ext[:p.extN], s.id)
	}
}

// TestReassembleReleaseReuse: a delivered datagram stays intact while the
// caller holds it, and its buffer serves the next datagram once released.
func TestReassembleReleaseReuse(t *testing.T) {
	r := newReassembler(reassemblyConfig{})
	a := reasmSimple(4, 1, 2000)
	wa, _ := reasmFeedAll(t, r, a.split(1480), reasmT0)
	keep := bytes.Clone(wa)
	for id := uint32(2); id < 5; id++ {
		s := reasmSimple(4, id, 2000)
		w, _ := reasmFeedAll(t, r, s.split(1480), reasmT0)
		if &w[0] == &wa[0] {
			t.Fatalf("a held buffer was reused")
		}
		r.release(w, nil)
	}
	if !bytes.Equal(wa, keep) {
		t.Fatalf("a held datagram changed")
	}
	r.release(wa, nil)
	w, _ := reasmFeedAll(t, r, reasmSimple(4, 9, 2000).split(1480), reasmT0)
	if &w[0] != &wa[0] {
		t.Errorf("the released buffer was not reused")
	}
	reasmMustHold(t, r)
}

// TestReassembleNoAllocs measures steady-state reassembly of a datagram in
// three fragments: buffers and records come from the free lists.
func TestReassembleNoAllocs(t *testing.T) {
	for _, v := range []uint8{4, 6} {
		s := reasmSimple(v, 0x4242, 3000)
		frames := s.split(1232)
		if len(frames) != 3 {
			t.Fatalf("%d fragments", len(frames))
		}
		infos := make([]parsed, len(frames))
		for i, f := range frames {
			if vd := classify(f, v, reasmPort, 0, &infos[i]); vd != fragment {
				t.Fatal(vd)
			}
		}
		r := newReassembler(reassemblyConfig{})
		now := reasmT0
		allocs := testing.AllocsPerRun(1000, func() {
			now = now.Add(time.Millisecond)
			for i := range infos {
				p := &infos[i]
				whole, _, vd := r.add(p.Version, p.Src.Addr(), p.Dst.Addr(), &p.frag, now, nil)
				if i == len(infos)-1 {
					if vd != deliver {
						panic(vd)
					}
					r.release(whole, nil)
				}
			}
		})
		t.Logf("v%d: %v allocations per 3-fragment datagram", v, allocs)
		if allocs != 0 {
			t.Errorf("v%d: %v allocations per datagram, want 0", v, allocs)
		}
	}
}

// TestReassembleConcurrent has several goroutines reassemble at once, as
// the per-family receive goroutines do.
func TestReassembleConcurrent(t *testing.T) {
	r := newReassembler(reassemblyConfig{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				v := uint8(4 + 2*(g%2))
				s := reasmSimple(v, uint32(g*1000+i), 1000+i)
				frames := s.split(256)
				rng := rand.New(rand.NewPCG(uint64(g), uint64(i)))
				rng.Shuffle(len(frames), func(a, b int) { frames[a], frames[b] = frames[b], frames[a] })
				// Only the test goroutine may stop the test: report and go on.
				var whole []byte
				var n int
				for _, f := range frames {
					var p parsed
					if v := classify(f, v, reasmPort, 0, &p); v != fragment {
						t.Errorf("goroutine %d datagram %d: classify %v", g, i, v)
						return
					}
					whole, n, _ = r.add(p.Version, p.Src.Addr(), p.Dst.Addr(), &p.frag, reasmT0, nil)
				}
				if !bytes.Equal(whole, s.whole()) || n != len(frames) {
					t.Errorf("goroutine %d datagram %d: wrong output", g, i)
				}
				r.release(whole, nil)
			}
		})
	}
	wg.Wait()
	reasmMustHold(t, r)
	if r.inUse() != 0 {
		t.Errorf("inUse %d after all completed", r.inUse())
	}
}

// TestReassembleDefaults pins the defaults the documentation gives.
func TestReassembleDefaults(t *testing.T) {
	r := newReassembler(reassemblyConfig{})
	c := r.cfg
	if c.timeout != 30*time.Second || c.maxFragments != 64 || c.maxPerSource != 64 ||
		c.maxBytes != 4<<20 || c.maxSourceBytes != 1<<20 {
		t.Errorf("defaults %+v", c)
	}
	small := newReassembler(reassemblyConfig{maxBytes: 64 << 10}).cfg
	if small.maxSourceBytes != 64<<10 {
		t.Errorf("small cap: per-source %d, want all of it", small.maxSourceBytes)
	}
	t.Logf("datagramOverhead %d bytes", datagramOverhead)
}

func BenchmarkReassemble(b *testing.B) {
	for _, v := range []uint8{4, 6} {
		b.Run(fmt.Sprintf("v%d/3x1232", v), func(b *testing.B) {
			s := reasmSimple(v, 1, 3000)
			frames := s.split(1232)
			infos := make([]parsed, len(frames))
			for i, f := range frames {
				classify(f, v, reasmPort, 0, &infos[i])
			}
			r := newReassembler(reassemblyConfig{})
			b.ReportAllocs()
			b.SetBytes(int64(len(s.udp)))
			now := reasmT0
			for b.Loop() {
				now = now.Add(time.Microsecond)
				for i := range infos {
					p := &infos[i]
					whole, _, _ := r.add(p.Version, p.Src.Addr(), p.Dst.Addr(), &p.frag, now, nil)
					r.release(whole, nil)
				}
			}
		})
	}
}

// reasmFuzzSrc is the source of the fuzzer's raw fragInfo values, kept
// apart from the datagrams whose output it checks byte for byte.
var reasmFuzzSrc = netip.MustParseAddr("192.0.2.200")

// reasmFuzzSent are the datagrams FuzzReassembly cuts up. Index bits: 0
// the family, 1 the source (the second carries IPv4 options or IPv6
// extension headers in its first fragment), 2 and 3 the identification,
// so that a source can go over its limit. Sizes run from one chunk's
// worth to several.
func reasmFuzzSent() []*reasmSent {
	sizes := []int{100, 37, 1500, 300, 9, 2100, 64, 700, 1016, 1017, 3000, 40, 250, 5, 1900, 800}
	var out []*reasmSent
	for i, n := range sizes {
		v, src, dst := uint8(4), reasmSrc4, reasmDst4
		if i&1 != 0 {
			v, src, dst = 6, reasmSrc6, reasmDst6
		}
		if i&2 != 0 {
			if v == 4 {
				src = reasmSrc4b
			} else {
				src = reasmSrc6b
			}
		}
		s := newReasmSent(v, src, dst, uint32(0x100+i>>2), payloadBytes(n))
		s.ttl = uint8(30 + i)
		if i&2 != 0 {
			if v == 4 {
				s.opts = []byte{0x94, 0x04, 0, 0, 1, 1, 1, 0}
			} else {
				s.exts, s.extLens = []uint8{nhHopByHop, nhRouting}, []int{8, 24}
			}
		}
		out = append(out, s)
	}
	return out
}

// FuzzReassembly decodes its input as a sequence of four-byte operations
// on one reassembler with small limits, and checks after each that the
// books balance and the memory cap holds. Fragments are cut from fixed
// datagrams (reasmFuzzSent): every byte a fragment carries at offset o is
// the byte the datagram has at o (or, past its end, a fixed filler), while
// offsets, lengths, the more flag, duplicates, overlaps, order and timing
// are the fuzzer's. So anything delivered must carry exactly the UDP
// datagram that was sent, and when it has the sent length it must be
// byte-identical to the expected reassembly. Another operation offers raw
// fragInfo values that classify would never produce, under a source of
// their own, to check only that nothing panics or leaks.
//
// Operation bytes: b0 low 4 bits pick the datagram, the next 3 the kind;
// b1 and b2 are offset and length in 8-byte units; b3 varies the TTL and
// options of non-first fragments.
func FuzzReassembly(f *testing.F) {
	f.Add([]byte{0, 0, 4, 0, 0, 5, 4, 0, 0, 10, 4, 0})
	f.Add([]byte{3, 20, 9, 0, 3, 10, 9, 1, 3, 0, 9, 2})
	f.Add([]byte{1, 0, 3, 0, 1, 2, 3, 0, 1, 4, 3, 0, 1, 8, 9, 0})
	f.Add([]byte{0x40, 0, 1, 0, 0x50, 3, 1, 0, 0x50, 9, 3, 0, 0x40, 40, 1, 1})
	f.Add([]byte{0x70, 0, 0, 0x41, 0x71, 1, 16, 0x20, 0x79, 0xff, 0xf0, 0xff})
	// A trailing byte keeps fragments.
	f.Add([]byte{3, 20, 9, 0, 3, 10, 9, 1, 3, 0, 9, 2, 1})
	f.Add([]byte{0x40, 0, 1, 0, 0x50, 3, 1, 0, 0x50, 9, 3, 0, 0x40, 40, 1, 1, 1})

	sent := reasmFuzzSent()
	expect := make([][]byte, len(sent))
	ext := make([][]byte, len(sent))
	for i, s := range sent {
		expect[i] = s.whole()
		ext[i] = append(slices.Clone(s.udp), bytes.Repeat([]byte{0xee}, 600)...)
	}

	f.Fuzz(func(t *testing.T, in []byte) {
		// Long inputs add nothing a shorter one cannot reach; they only
		// slow the search down.
		in = in[:min(len(in), 4*512)]
		// Bytes past the last group of four keep fragments.
		keep := len(in)%4 != 0
		r := newReassembler(reassemblyConfig{
			timeout:        5 * time.Second,
			maxFragments:   16,
			maxPerSource:   3,
			maxBytes:       16 << 10,
			maxSourceBytes: 8 << 10,
			keepFragments:  keep,
		})
		now := reasmT0
		var arrival uint32 // the time given to each fragment added
		type held struct {
			whole, copy []byte
			kept        []keptFragment
			keptCopy    [][]byte
		}
		var hold []held
		releaseAll := func() {
			for _, h := range hold {
				if !bytes.Equal(h.whole, h.copy) {
					t.Fatalf("a delivered datagram changed before its release")
				}
				for i, k := range h.kept {
					if !bytes.Equal(k.ip, h.keptCopy[i]) {
						t.Fatalf("a kept fragment changed before its release")
					}
				}
				r.release(h.whole, h.kept)
			}
			hold = hold[:0]
		}
		var kept *[]keptFragment
		if keep {
			kept = new([]keptFragment)
		}

		for len(in) >= 4 {
			b0, b1, b2, b3 := in[0], in[1], in[2], in[3]
			in = in[4:]
			idx := int(b0 & 15)
			s := sent[idx]
			kind := b0 >> 4 & 7
			now = now.Add(time.Millisecond)

			var frame []byte
			switch kind {
			case 6:
				now = now.Add(time.Duration(b1) * 250 * time.Millisecond)
				r.expire(now)
				if b2&1 != 0 {
					releaseAll()
				}
			case 7:
				fi := &fragInfo{
					id:         uint32(b1 & 3),
					offset:     int(int16(uint16(b1)<<8 | uint16(b2))),
					more:       b3&1 != 0,
					nextHeader: protoUDP,
					data:       ext[0][:int(b3)],
				}
				v := uint8(4)
				if b0&1 != 0 {
					v = 6
				}
				head := make([]byte, int(b3>>1))
				if len(head) > 0 {
					head[0] = v<<4 | byte(len(head)/4)&0xf
				}
				fi.head = head
				arrival++
				fi.arrival = keptFragment{ip: append(slices.Clone(head), fi.data...), sec: arrival}
				whole, _, vd := r.add(v, reasmFuzzSrc, reasmDst4, fi, now, kept)
				if whole != nil {
					var p parsed
					classify(whole, v, reasmPort, 0, &p)
					if keep {
						r.release(whole, *kept)
						*kept = nil
					} else {
						r.release(whole, nil)
					}
				} else if vd == deliver {
					t.Fatalf("deliver without a datagram")
				}
			default:
				off := int(b1) * 8
				n := (int(b2)%64 + 1) * 8
				var more bool
				switch kind {
				case 4: // a lying more flag
					more = off+n >= len(s.udp)
				case 5: // a length that is not a multiple of 8
					n = int(b2)%64 + 1
					more = off+n < len(s.udp)
				default:
					off %= (len(s.udp) + 7) / 8 * 8
					n = min(n, len(s.udp)-off)
					more = off+n < len(s.udp)
				}
				if off+n > len(ext[idx]) {
					continue
				}
				c := *s
				c.udp = ext[idx]
				if off != 0 {
					c.ttl = b3
					if b3&1 != 0 {
						c.opts, c.exts, c.extLens = nil, nil, nil
					}
				}
				frame = c.fragment(off, n, more)
			}
			if frame != nil {
				var p parsed
				if classify(frame, frame[0]>>4, reasmPort, 0, &p) != fragment {
					continue
				}
				arrival++
				p.frag.arrival = keptFragment{ip: p.ip, sec: arrival, ifIndex: idx}
				whole, frags, v := r.add(p.Version, p.Src.Addr(), p.Dst.Addr(), &p.frag, now, kept)
				if (whole != nil) != (v == deliver) {
					t.Fatalf("whole %v with verdict %v", whole != nil, v)
				}
				if whole != nil {
					reasmFuzzCheck(t, s, expect[idx], whole, frags)
					h := held{whole: whole, copy: bytes.Clone(whole)}
					if keep {
						h.kept = *kept
						*kept = nil
						reasmCheckKept(t, h.kept, frags, s.id, arrival)
						for _, k := range h.kept {
							h.keptCopy = append(h.keptCopy, bytes.Clone(k.ip))
						}
					}
					hold = append(hold, h)
					if len(hold) > 4 {
						releaseAll()
					}
				}
			}
			if err := reasmInvariants(r); err != nil {
				t.Fatal(err)
			}
		}
		releaseAll()
		r.expire(now.Add(time.Hour))
		if err := reasmInvariants(r); err != nil {
			t.Fatal(err)
		}
		if r.inUse() != 0 || len(r.datagrams) != 0 || len(r.sources) != 0 {
			t.Fatalf("after every timeout: %d bytes, %d datagrams, %d sources", r.inUse(), len(r.datagrams), len(r.sources))
		}
	})
}

// reasmCheckKept checks the fragments kept with a datagram of
// identification id, of frags fragments, the last of which was added at
// time last: one per fragment, in the order added, each a fragment of
// the datagram in a buffer of its own.
func reasmCheckKept(t *testing.T, kept []keptFragment, frags int, id uint32, last uint32) {
	t.Helper()
	if len(kept) != frags {
		t.Fatalf("%d fragments kept of %d", len(kept), frags)
	}
	for i, k := range kept {
		var p parsed
		if v := classify(k.ip, k.ip[0]>>4, reasmPort, 0, &p); v != fragment || p.frag.id != id {
			t.Fatalf("kept fragment %d: verdict %v, id %#x, want a fragment of %#x", i, v, p.frag.id, id)
		}
		if i > 0 && k.sec <= kept[i-1].sec || i == len(kept)-1 && k.sec != last {
			t.Fatalf("kept fragments out of order: %d at %d after %d (last added at %d)", i, k.sec, kept[max(i-1, 0)].sec, last)
		}
		for _, o := range kept[:i] {
			if &o.ip[:cap(o.ip)][cap(o.ip)-1] == &k.ip[:cap(k.ip)][cap(k.ip)-1] {
				t.Fatalf("two kept fragments share a buffer")
			}
		}
	}
}

// reasmFuzzCheck checks a datagram the fuzzer got back against the one
// its fragments were cut from.
func reasmFuzzCheck(t *testing.T, s *reasmSent, expect, whole []byte, frags int) {
	t.Helper()
	if frags < 1 {
		t.Fatalf("delivered with %d fragments", frags)
	}
	var p parsed
	v := classify(whole, s.version, reasmPort, 0, &p)
	if len(whole) == len(expect) {
		if !bytes.Equal(whole, expect) {
			t.Fatalf("delivered datagram of the sent length differs from it:\n got % x\nwant % x", whole, expect)
		}
		if v != deliver {
			t.Fatalf("the sent datagram re-classifies as %v", v)
		}
	}
	if v != deliver {
		return
	}
	if !bytes.Equal(p.udp, s.udp) {
		t.Fatalf("delivered UDP datagram differs from the one sent")
	}
	if p.TTL != s.ttl || p.ID != s.id || !bytes.Equal(p.Options, s.opts) {
		t.Fatalf("header TTL %d ID %#x options % x, want %d %#x % x", p.TTL, p.ID, p.Options, s.ttl, s.id, s.opts)
	}
}

// twoFragments4 is an IPv4 datagram of 16 data bytes in two fragments
// with the given ECN codepoints.
func twoFragments4(ecn1, ecn2 uint8) (first, last fragInfo) {
	h := v4()
	h.proto = protoUDP
	head := h.packet(nil)
	first = fragInfo{id: 1, offset: 0, more: true, head: head, nextHeader: protoUDP, data: payloadOf(8), ecn: ecn1}
	last = fragInfo{id: 1, offset: 8, head: head, nextHeader: protoUDP, data: payloadOf(8), ecn: ecn2}
	return first, last
}

// TestReassembleECN checks the ECN rules of RFC 3168, 5.3, as Linux's
// ip_frag_ecn_table applies them: CE on any fragment marks the datagram,
// and Not-ECT mixed with an ECN-capable codepoint drops it.
func TestReassembleECN(t *testing.T) {
	src, dst := netip.AddrFrom4(src4), netip.AddrFrom4(dst4)
	for _, c := range []struct {
		ecn1, ecn2 uint8
		want       verdict
		wantECN    uint8
	}{
		{0, 0, deliver, 0}, {2, 2, deliver, 2}, {1, 2, deliver, 1}, {2, 3, deliver, 3},
		{3, 1, deliver, 3}, {3, 3, deliver, 3}, {0, 3, dropFragECN, 0}, {2, 0, dropFragECN, 0},
	} {
		r := newReassembler(reassemblyConfig{})
		first, last := twoFragments4(c.ecn1, c.ecn2)
		first.head = bytes.Clone(first.head)
		first.head[1] = 0xb8 | c.ecn1 // DSCP 46 and the first fragment's ECN
		if _, _, v := r.add(4, src, dst, &first, reasmT0, nil); v != fragment {
			t.Fatalf("ECN %d, %d: first fragment: %s", c.ecn1, c.ecn2, verdictName(v))
		}
		whole, _, v := r.add(4, src, dst, &last, reasmT0, nil)
		if v != c.want {
			t.Errorf("ECN %d, %d: verdict %s, want %s", c.ecn1, c.ecn2, verdictName(v), verdictName(c.want))
			continue
		}
		if v != deliver {
			continue
		}
		if got := whole[1]; got != 0xb8|c.wantECN || refSum(0, whole[:20]) != 0xffff {
			t.Errorf("ECN %d, %d: TOS %#x (header sum %#x), want %#x", c.ecn1, c.ecn2, got, refSum(0, whole[:20]), 0xb8|c.wantECN)
		}
		r.release(whole, nil)
	}
}

// TestReassembleEmptyFragment checks that a fragment with no data
// discards the datagram in reassembly, and that later fragments start a
// new one (ip_frag_queue).
func TestReassembleEmptyFragment(t *testing.T) {
	src, dst := netip.AddrFrom4(src4), netip.AddrFrom4(dst4)
	r := newReassembler(reassemblyConfig{})
	first, last := twoFragments4(0, 0)
	empty := last
	empty.data, empty.more = nil, true
	if _, _, v := r.add(4, src, dst, &first, reasmT0, nil); v != fragment {
		t.Fatalf("first: %s", verdictName(v))
	}
	if _, _, v := r.add(4, src, dst, &empty, reasmT0, nil); v != dropMalformedFragment {
		t.Fatalf("empty: %s, want dropMalformedFragment", verdictName(v))
	}
	if _, _, v := r.add(4, src, dst, &last, reasmT0, nil); v != fragment {
		t.Fatalf("last after the empty one: %s, want fragment (a new datagram)", verdictName(v))
	}
	whole, _, v := r.add(4, src, dst, &first, reasmT0, nil)
	if v != deliver {
		t.Fatalf("first again: %s, want deliver", verdictName(v))
	}
	r.release(whole, nil)
}

// TestReassembleTimeoutPerFragment checks that a fragment's own timeout
// (the namespace's ipfrag_time or ip6frag_time) bounds its datagram, even
// when an older datagram with a longer one is still waiting.
func TestReassembleTimeoutPerFragment(t *testing.T) {
	src, dst := netip.AddrFrom4(src4), netip.AddrFrom4(dst4)
	r := newReassembler(reassemblyConfig{timeout: time.Minute})
	older, _ := twoFragments4(0, 0)
	older.id = 2
	if _, _, v := r.add(4, src, dst, &older, reasmT0, nil); v != fragment {
		t.Fatalf("older: %s", verdictName(v))
	}
	first, last := twoFragments4(0, 0)
	first.timeout, last.timeout = time.Second, time.Second
	if _, _, v := r.add(4, src, dst, &first, reasmT0, nil); v != fragment {
		t.Fatalf("first: %s", verdictName(v))
	}
	if _, _, v := r.add(4, src, dst, &last, reasmT0.Add(2*time.Second), nil); v != fragment {
		t.Fatalf("last, after the timeout: %s, want fragment (a new datagram)", verdictName(v))
	}
	if to, _ := r.drops(); to != 1 {
		t.Fatalf("%d timeouts, want 1", to)
	}
}

// TestReassembleKeepFragments keeps the fragments of each datagram, fed
// shuffled with an exact duplicate among them: they come out with the
// datagram, byte for byte as fed, in the order fed, with their times and
// interfaces, the duplicate left out; while held they are charged, and
// released they serve the next datagram.
func TestReassembleKeepFragments(t *testing.T) {
	r := newReassembler(reassemblyConfig{keepFragments: true})
	var kept []keptFragment
	for ci, c := range reasmCases() {
		frames := c.sent.split(c.size)
		rng := rand.New(rand.NewPCG(7, uint64(ci)))
		order := rng.Perm(len(frames))
		var fed [][]byte
		for i, j := range order {
			var p parsed
			if v := classify(frames[j], c.sent.version, reasmPort, 0, &p); v != fragment {
				t.Fatalf("%s: classify %v", c.name, v)
			}
			p.frag.arrival = keptFragment{ip: p.ip, sec: uint32(i), nsec: uint32(j), ifIndex: 3 + i%2}
			whole, n, v := r.add(p.Version, p.Src.Addr(), p.Dst.Addr(), &p.frag, reasmT0, &kept)
			fed = append(fed, frames[j])
			reasmMustHold(t, r)
			if i == 0 && len(frames) > 1 {
				// The same fragment again is absorbed, and not kept.
				if _, _, v := r.add(p.Version, p.Src.Addr(), p.Dst.Addr(), &p.frag, reasmT0, &kept); v != fragment {
					t.Fatalf("%s: duplicate: verdict %v", c.name, v)
				}
			}
			if i < len(frames)-1 {
				if whole != nil || len(kept) != 0 {
					t.Fatalf("%s: fragment %d: a datagram, or fragments handed over", c.name, i)
				}
				continue
			}
			if v != deliver {
				t.Fatalf("%s: verdict %v", c.name, v)
			}
			reasmCheckWhole(t, c.sent, whole, n, len(frames))
			if len(kept) != len(frames) {
				t.Fatalf("%s: %d fragments kept of %d", c.name, len(kept), len(frames))
			}
			for k, f := range kept {
				if !bytes.Equal(f.ip, fed[k]) || f.sec != uint32(k) || f.nsec != uint32(order[k]) || f.ifIndex != 3+k%2 {
					t.Fatalf("%s: kept fragment %d: %d bytes at %d.%d on %d; want fragment %d as fed", c.name, k, len(f.ip), f.sec, f.nsec, f.ifIndex, order[k])
				}
			}
			if r.inUse() != 0 {
				t.Errorf("%s: %d bytes still charged with the datagram handed over", c.name, r.inUse())
			}
			r.release(whole, kept)
			kept = kept[:0]
			reasmMustHold(t, r)
		}
	}
	// Steady state: the buffers and lists come from the free lists.
	s := reasmSimple(6, 0x77, 3000)
	frames := s.split(1232)
	infos := make([]parsed, len(frames))
	for i, f := range frames {
		classify(f, 6, reasmPort, 0, &infos[i])
		infos[i].frag.arrival = keptFragment{ip: infos[i].ip}
	}
	allocs := testing.AllocsPerRun(100, func() {
		for i := range infos {
			p := &infos[i]
			whole, _, _ := r.add(p.Version, p.Src.Addr(), p.Dst.Addr(), &p.frag, reasmT0, &kept)
			if whole != nil {
				r.release(whole, kept)
				kept = kept[:0]
			}
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per datagram keeping its fragments, want 0", allocs)
	}
}

// TestReassembleKeepFragmentsBounded floods a reassembler that keeps
// fragments: the copies are charged, so the caps hold as they do without.
func TestReassembleKeepFragmentsBounded(t *testing.T) {
	r := newReassembler(reassemblyConfig{keepFragments: true, maxBytes: 256 << 10})
	rng := rand.New(rand.NewPCG(3, 4))
	flood := append(reasmFlood(rng, 2000, 1400, 50, false), reasmFlood(rng, 2000, 1400, 50, true)...)
	for _, f := range flood {
		var p parsed
		if classify(f, f[0]>>4, reasmPort, 0, &p) != fragment {
			continue
		}
		p.frag.arrival = keptFragment{ip: p.ip}
		var kept []keptFragment
		if whole, _, _ := r.add(p.Version, p.Src.Addr(), p.Dst.Addr(), &p.frag, reasmT0, &kept); whole != nil {
			r.release(whole, kept)
		}
		if err := reasmInvariants(r); err != nil {
			t.Fatal(err)
		}
	}
	if _, e := r.drops(); e == 0 {
		t.Errorf("no evictions: the flood was too small to test the cap")
	}
}
