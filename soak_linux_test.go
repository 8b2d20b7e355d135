package udpstream

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpstream/udpstream/internal/netnstest"
)

// The soak test runs two streams hard for -soak while everything that can
// go wrong happens at once, and checks that resources stay flat, that the
// counters add up at every moment and exactly at the end, and that nothing
// delivered is corrupt or duplicated.
//
// Stream M is bound to in0 and receives only unfragmented datagrams,
// injected on in0's veth peer, to in0's fixed addresses and to addresses
// that come and go, while in0 goes down and up. No fragment ever crosses
// in0, so M's accounting is exact: at the end it must have counted every
// frame that reached it once, as a witness packet socket bound like it,
// with the same filter, counts them.
//
// Stream F, on all interfaces, receives fragmented datagrams injected on a
// second link, a flood of first fragments from spoofed sources there, and
// datagrams from ordinary UDP sockets over loopback, some of them larger
// than its MTU so that the kernel fragments them. Every fragment passes the
// kernel filter of every unbound stream, so F is where fragments are
// judged.
//
// Streams on other ports are opened and closed all along, and the
// consumers of M and F stall for a while, in turn, then race.

var soakFor = flag.Duration("soak", 3*time.Second, "how long TestSoak runs its traffic")

// envSoak carries -soak to the namespaced child, which is started with the
// test flags only.
const envSoak = "UDPSTREAM_SOAK"

// Addresses of the soak's links. The spoofed sources are benchmark space
// (RFC 2544) and a documentation prefix; all of it exists only in the
// test's namespace.
var (
	soakM4, soakM6   = netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	soakMP4, soakMP6 = netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("2001:db8::2")
	soakF4, soakF6   = netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8:f::1")
	soakFP4, soakFP6 = netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("2001:db8:f::2")
)

// Flows: each sender numbers its datagrams in a flow of its own.
const (
	flowM4      = iota // M, IPv4, to in0's fixed address
	flowM4Churn        // M, IPv4, to an address that comes and goes
	flowM6
	flowM6Churn
	flowF4Frag // F, injected fragmented datagrams
	flowF6Frag
	flowF4Lo // F, UDP sockets over loopback
	flowF6Lo
	numFlows
)

// Soak payloads: flow, sequence, flags, length, filler, and a CRC-32 of
// all that, so that a delivered datagram proves itself whole.
const (
	soakHdrLen   = 12
	soakMinLen   = soakHdrLen + 4
	soakFlagGone = 1 // sent to an address removed well before
)

func soakPayload(flow uint8, seq uint64, flags byte, n int) []byte {
	b := make([]byte, n)
	b[0] = flow
	binary.BigEndian.PutUint64(b[1:], seq)
	b[9] = flags
	binary.BigEndian.PutUint16(b[10:], uint16(n))
	for i := soakHdrLen; i < n-4; i++ {
		b[i] = byte(seq*31) ^ byte(i*7) ^ flow
	}
	binary.BigEndian.PutUint32(b[n-4:], crc32.ChecksumIEEE(b[:n-4]))
	return b
}

// soakParse checks a delivered payload and returns what it says.
func soakParse(b []byte) (flow uint8, seq uint64, flags byte, err error) {
	if len(b) < soakMinLen {
		return 0, 0, 0, fmt.Errorf("%d bytes", len(b))
	}
	if crc32.ChecksumIEEE(b[:len(b)-4]) != binary.BigEndian.Uint32(b[len(b)-4:]) {
		return 0, 0, 0, fmt.Errorf("%d bytes: CRC-32 mismatch", len(b))
	}
	flow, seq, flags = b[0], binary.BigEndian.Uint64(b[1:]), b[9]
	if n := int(binary.BigEndian.Uint16(b[10:])); n != len(b) || flow >= numFlows {
		return 0, 0, 0, fmt.Errorf("%d bytes: header says flow %d, %d bytes", len(b), flow, n)
	}
	for i := soakHdrLen; i < len(b)-4; i++ {
		if b[i] != byte(seq*31)^byte(i*7)^flow {
			return 0, 0, 0, fmt.Errorf("flow %d seq %d: filler wrong at %d", flow, seq, i)
		}
	}
	return flow, seq, flags, nil
}

// seqWindow remembers the last seqWindowSize sequence numbers of a flow,
// in bounded memory. Datagrams of a flow can be reordered only before the
// ring (on the per-CPU backlogs), by far less than the window; one older
// than it can only be a duplicate.
type seqWindow struct {
	max  uint64
	seen bool
	bits [seqWindowSize / 64]uint64
}

const seqWindowSize = 1 << 16

func (w *seqWindow) bit(seq uint64) (*uint64, uint64) {
	i := seq % seqWindowSize
	return &w.bits[i/64], 1 << (i % 64)
}

// see records seq and reports whether it was seen before (or is too old
// to tell, which is as bad) and whether it came after a later one.
func (w *seqWindow) see(seq uint64) (dup, reordered bool) {
	if !w.seen || seq > w.max {
		if !w.seen || seq-w.max >= seqWindowSize {
			clear(w.bits[:])
		} else {
			for s := w.max + 1; s < seq; s++ {
				word, m := w.bit(s)
				*word &^= m
			}
		}
		w.max, w.seen = seq, true
		word, m := w.bit(seq)
		*word |= m
		return false, false
	}
	if w.max-seq >= seqWindowSize {
		return true, true
	}
	word, m := w.bit(seq)
	dup = *word&m != 0
	*word |= m
	return dup, true
}

// soakFailures reports the first few failures of the soak's goroutines
// and counts the rest, so that one broken invariant does not flood the log.
type soakFailures struct {
	t  *testing.T
	mu sync.Mutex
	n  int
}

func (f *soakFailures) fail(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if f.n <= 10 {
		f.t.Errorf(format, args...)
	} else if f.n == 11 {
		f.t.Errorf("more failures follow; only their count is reported")
	}
}

// soakConsumer reads a stream's channel, stalling in the phases its
// schedule says, and verifies everything delivered.
type soakConsumer struct {
	name      string
	flows     []uint8 // the flows this stream may deliver
	received  atomic.Uint64
	reordered atomic.Uint64
	fragments atomic.Uint64 // delivered datagrams that came in fragments
	stalled   atomic.Int64  // nanoseconds spent stalling
	windows   [numFlows]seqWindow
}

// run consumes ch until it is closed. Until stallUntil it stalls for stall
// in every period of 2*stall, from offset on.
func (c *soakConsumer) run(ch <-chan Packet[[]byte], start time.Time, stall, offset time.Duration, stallUntil time.Time, f *soakFailures) {
	for {
		if now := time.Now(); now.Before(stallUntil) {
			if ph := (now.Sub(start) + offset) % (2 * stall); ph < stall {
				d := min(stall-ph, stallUntil.Sub(now))
				time.Sleep(d)
				c.stalled.Add(int64(d))
			}
		}
		p, ok := <-ch
		if !ok {
			return
		}
		c.received.Add(1)
		c.check(p, f)
	}
}

func (c *soakConsumer) check(p Packet[[]byte], f *soakFailures) {
	if p.Err != nil {
		f.fail("%s: delivered an error: %v", c.name, p.Err)
		return
	}
	flow, seq, flags, err := soakParse(p.Value)
	if err != nil {
		f.fail("%s: corrupt datagram from %v (%d fragments): %v", c.name, p.Header.Src, p.Header.Fragments, err)
		return
	}
	if !slices.Contains(c.flows, flow) {
		f.fail("%s: delivered flow %d, which was never sent to it", c.name, flow)
		return
	}
	if flags&soakFlagGone != 0 {
		f.fail("%s: delivered flow %d seq %d to %v, sent when that address had been removed for %v", c.name, flow, seq, p.Header.Dst.Addr(), soakGoneGrace)
	}
	if p.Header.Fragments > 1 {
		c.fragments.Add(1)
	}
	dup, reordered := c.windows[flow].see(seq)
	if dup {
		f.fail("%s: flow %d seq %d delivered twice (or after %d later ones)", c.name, flow, seq, seqWindowSize)
	}
	if reordered {
		c.reordered.Add(1)
	}
}

// soakGoneGrace is how long after an address is removed a datagram to it
// must no longer be delivered: time for the stream's address watcher to
// hear of it. The kernel announces the removal before `ip addr del`
// returns; the watcher is one goroutine wakeup away.
const soakGoneGrace = 250 * time.Millisecond

// witness counts the frames that pass a filter at a packet socket per
// family, bound like the stream it vouches for. It never reads them: the
// kernel counts every frame that passed the filter in PACKET_STATISTICS,
// queued or dropped for want of room.
type witness struct {
	mu  sync.Mutex
	fds []int
	n   uint64
}

func openWitness(t *testing.T, sockType, ifIndex int, prog func(fam uint8) []unix.SockFilter) *witness {
	t.Helper()
	w := &witness{}
	t.Cleanup(func() {
		for _, fd := range w.fds {
			unix.Close(fd)
		}
	})
	for _, fam := range []uint8{4, 6} {
		// Protocol 0 receives nothing until bound, after the filter.
		fd, err := unix.Socket(unix.AF_PACKET, sockType|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		w.fds = append(w.fds, fd)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 0); err != nil {
			t.Fatal(err)
		}
		if err := attachFilter(fd, prog(fam)); err != nil {
			t.Fatal(err)
		}
		proto := uint16(unix.ETH_P_IP)
		if fam == 6 {
			proto = unix.ETH_P_IPV6
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: ifIndex}); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

// count returns the frames counted since the witness was opened (the
// kernel resets its count on every read).
func (w *witness) count() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, fd := range w.fds {
		if st, err := unix.GetsockoptTpacketStats(fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
			w.n += uint64(st.Packets) // drops included
		}
	}
	return w.n
}

// laterFragments is the filter, on SOCK_DGRAM (offset 0 is the IP header),
// of IP fragments other than the first: IPv4 with a fragment offset, IPv6
// with a Fragment header right after the fixed header and an offset. The
// soak sends no other kind.
func laterFragments(fam uint8) []unix.SockFilter {
	const (
		ldH   = unix.BPF_LD | unix.BPF_H | unix.BPF_ABS
		ldB   = unix.BPF_LD | unix.BPF_B | unix.BPF_ABS
		jeqK  = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jsetK = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
		retK  = unix.BPF_RET | unix.BPF_K
	)
	if fam == 4 {
		return []unix.SockFilter{
			{Code: ldH, K: 6},
			{Code: jsetK, K: 0x1fff, Jt: 0, Jf: 1},
			{Code: retK, K: 64},
			{Code: retK, K: 0},
		}
	}
	return []unix.SockFilter{
		{Code: ldB, K: 6},
		{Code: jeqK, K: nhFragment, Jt: 0, Jf: 3},
		{Code: ldH, K: 42},
		{Code: jsetK, K: 0xfff8, Jt: 0, Jf: 1},
		{Code: retK, K: 64},
		{Code: retK, K: 0},
	}
}

// wire counts frames put on the wire toward a stream: attempted before
// each send (so that a frame is counted before the stream can see it),
// and failed when the send was refused.
type wire struct{ attempted, failed atomic.Uint64 }

// rawLink is one end of a veth pair to inject frames on.
type rawLink struct{ *injector }

// soakLink makes veth pair near <-> far, with IPv6 off on far so that far
// sends nothing of its own, and returns an injector on far.
func soakLink(t *testing.T, near, far string, prefixes ...string) (*rawLink, *net.Interface) {
	t.Helper()
	ip(t, "link", "add", near, "type", "veth", "peer", "name", far)
	writeSysctl(t, "net/ipv6/conf/"+far+"/disable_ipv6", "1")
	// Addresses outlive the link going down, as IPv4 ones do.
	writeSysctl(t, "net/ipv6/conf/"+near+"/keep_addr_on_down", "1")
	for _, p := range prefixes {
		if netip.MustParsePrefix(p).Addr().Is6() {
			addr6(t, p, near)
		} else {
			ip(t, "addr", "add", p, "dev", near)
		}
	}
	ip(t, "link", "set", far, "up")
	ip(t, "link", "set", near, "up")
	nearIf := iface(t, near)
	farIf := iface(t, far)
	return &rawLink{newInjector(t, farIf, nearIf.HardwareAddr)}, nearIf
}

// send injects pkt, counting it in w. Only a refusal for want of buffer
// is expected under load; any other error is returned.
func (l *rawLink) send(pkt []byte, w *wire) error {
	w.attempted.Add(1)
	err := l.writeTo(pkt, l.dst)
	if err != nil {
		w.failed.Add(1)
		if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) {
			return nil
		}
	}
	return err
}

func writeSysctl(t *testing.T, name, value string) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/"+name, []byte(value), 0); err != nil {
		t.Fatal(err)
	}
}

// rxPackets returns the frames interface name has received, from
// /proc/net/dev (of this namespace, unlike /sys/class/net).
func rxPackets(name string) (uint64, error) {
	b, err := os.ReadFile("/proc/net/dev")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		dev, rest, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(dev) != name {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 2 {
			break
		}
		return strconv.ParseUint(f[1], 10, 64)
	}
	return 0, fmt.Errorf("no interface %s in /proc/net/dev", name)
}

// backlogEmpty reports whether no CPU holds received frames not yet
// through the protocol handlers (the backlog length, column 12 of
// /proc/net/softnet_stat since Linux 6.0); ok false when it cannot tell.
func backlogEmpty() (empty, ok bool) {
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		return false, false
	}
	for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 13 {
			return false, false
		}
		if n, err := strconv.ParseUint(f[11], 16, 32); err != nil || n != 0 {
			return false, err == nil
		}
	}
	return true, true
}

// quiesce waits, once no more frames are being sent, until those sent are
// through the kernel's receive path.
func quiesce(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for empties := 0; empties < 2; {
		empty, ok := backlogEmpty()
		if !ok {
			time.Sleep(200 * time.Millisecond) // an older kernel: a generous guess
			return
		}
		if empty {
			empties++
		} else {
			empties = 0
		}
		if time.Now().After(deadline) {
			t.Fatalf("the receive backlog never emptied")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// resourceSample is one reading of the process's footprint.
type resourceSample struct {
	at         time.Duration // since the traffic started
	rss        float64       // bytes
	goroutines float64
	fds        float64
}

func readResources(at time.Duration) resourceSample {
	var pages float64
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			pages, _ = strconv.ParseFloat(f[1], 64)
		}
	}
	ents, _ := os.ReadDir("/proc/self/fd")
	fds := len(ents)
	return resourceSample{
		at:         at,
		rss:        pages * float64(os.Getpagesize()),
		goroutines: float64(runtime.NumGoroutine()),
		fds:        float64(fds),
	}
}

// trendLimit is how steep a footprint may climb over the second half of a
// soak before it counts as a leak. A reading wobbles by up to band (what
// the streams being opened and closed at that moment, a running ip
// command and the Go heap's cycle hold); the steepest line a wobble can
// give is a step of band in the middle of the half, whose least-squares
// slope is 1.5 band over the half's length. floor is a steady drift too
// small to matter in an hour.
type trendLimit struct {
	name        string
	unit        float64 // a reading is divided by this for the log
	band, floor float64 // in readings, and readings per minute
}

// soakTrend fits a line by least squares to the second half of the
// samples and returns its slope per minute and the slope allowed.
func soakTrend(samples []resourceSample, get func(resourceSample) float64, lim trendLimit) (slope, allowed float64, ok bool) {
	if len(samples) < 4 {
		return 0, 0, true
	}
	half := samples[len(samples)/2:]
	var sx, sy, sxx, sxy float64
	for _, s := range half {
		x, y := s.at.Minutes(), get(s)
		sx += x
		sy += y
		sxx += x * x
		sxy += x * y
	}
	n := float64(len(half))
	den := n*sxx - sx*sx
	if den == 0 {
		return 0, 0, true
	}
	slope = (n*sxy - sx*sy) / den
	span := (half[len(half)-1].at - half[0].at).Minutes()
	allowed = 1.5*lim.band/span + lim.floor
	return slope, allowed, slope <= allowed
}

// The limits, per reading. A stream holds 6 fds (two packet sockets, two
// epoll instances, the reserving socket, netlink) and 4 or 5 goroutines;
// at most soakChurners streams are being churned at a time, and an ip
// command holds 3 goroutines and 6 fds while it runs. The heap of a run
// this busy swings by tens of MiB between collections. A leak of one
// goroutine or fd per stream churned (5 to 20 a second, -race or not)
// climbs at 300 a minute or more, which these catch from a 20-second soak
// on (TestSoakTrend); at any length, leakCheck's exact count at the end
// catches it too.
var (
	goroutineLimit = trendLimit{name: "goroutines", unit: 1, band: 5*soakChurners + 12, floor: 2}
	fdLimit        = trendLimit{name: "fds", unit: 1, band: 6*soakChurners + 12, floor: 2}
	rssLimit       = trendLimit{name: "RSS MiB", unit: 1 << 20, band: 64 << 20, floor: 4 << 20}
)

const soakChurners = 2

// soakStream is a stream under test and what it is checked against.
type soakStream struct {
	name  string
	s     *Stream[[]byte]
	c     *soakConsumer
	wire  *wire
	stray []*witness // frames the soak did not send that reach it
	prev  Stats
}

// sampleCheck checks the invariants that hold at any moment: the consumer
// holds at most one datagram per receive goroutine not yet counted; what
// the stream took in is no more than was put on the wire; no counter but
// Pending ever goes down.
func (ss *soakStream) sampleCheck(f *soakFailures) {
	failed := ss.wire.failed.Load()
	got := ss.c.received.Load() // before Stats: Delivered only grows
	st := ss.s.Stats()
	sent := ss.wire.attempted.Load() + ss.strays() // after Stats: counted before the send
	goroutines := uint64(len(ss.s.handlers))
	if got > st.Delivered+st.DecodeErrors+goroutines {
		f.fail("%s: consumer received %d, stats say delivered %d + decode errors %d (+%d in hand)", ss.name, got, st.Delivered, st.DecodeErrors, goroutines)
	}
	if took := st.Delivered + st.DecodeErrors + st.Pending + st.Dropped(); took > sent-failed {
		f.fail("%s: took in %d, but only %d frames were put on the wire: %+v", ss.name, took, sent-failed, st)
	}
	now, before := reflect.ValueOf(st), reflect.ValueOf(ss.prev)
	for i := range now.NumField() {
		name := now.Type().Field(i).Name
		if name != "Pending" && now.Field(i).Uint() < before.Field(i).Uint() {
			f.fail("%s: %s went down from %d to %d", ss.name, name, before.Field(i).Uint(), now.Field(i).Uint())
		}
	}
	ss.prev = st
}

func (ss *soakStream) strays() uint64 {
	var n uint64
	for _, w := range ss.stray {
		n += w.count()
	}
	return n
}

// churnAddr is an address of in0 that exists for a while; the soak never
// adds it again once removed.
type churnAddr struct {
	v4, v6  netip.Addr
	removed atomic.Int64 // UnixNano when removed; 0 while present
}

func TestSoak(t *testing.T) {
	if _, err := exec.LookPath("ip"); err != nil {
		netnstest.SkipOrFail(t, "the ip command (iproute2) is not installed")
	}
	if !netnstest.InNetns(t, envSoak+"="+soakFor.String()) {
		return
	}
	dur := *soakFor
	if v := os.Getenv(envSoak); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		dur = d
	}
	leakCheck(t)
	fails := &soakFailures{t: t}

	// Loopback narrowed so that the kernel fragments the larger datagrams
	// sent over it.
	ip(t, "link", "set", "lo", "mtu", "1500")
	inLink, in0 := soakLink(t, "in0", "in1", "192.0.2.1/24", "2001:db8::1/64")
	frLink, _ := soakLink(t, "fr0", "fr1", "198.51.100.1/24", "2001:db8:f::1/64")

	ctx := context.Background()
	sM, err := Open(ctx, 0, Payload, WithInterface("in0"))
	if err != nil {
		t.Fatal(err)
	}
	defer sM.Close()
	sF, err := Open(ctx, 0, Payload, WithReassembly(time.Second, 0, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer sF.Close()
	portM, portF := sM.Port(), sF.Port()
	sameFilter := func(port uint16) func(uint8) []unix.SockFilter {
		return func(fam uint8) []unix.SockFilter {
			prog, err := portFilter(fam, port, false, false)
			if err != nil {
				t.Fatal(err)
			}
			return prog
		}
	}
	witM := openWitness(t, unix.SOCK_RAW, in0.Index, sameFilter(portM))
	witF := openWitness(t, unix.SOCK_RAW, 0, sameFilter(portF))
	witFLater := openWitness(t, unix.SOCK_DGRAM, 0, laterFragments)
	// The near ends' own multicast listener reports (ICMPv6 behind a
	// Hop-by-Hop header) arrive on the far ends, where F, on every
	// interface, sees them too. Neither far end goes down, so witnesses
	// bound to them count these exactly.
	strayF := []*witness{
		openWitness(t, unix.SOCK_RAW, inLink.ifi.Index, sameFilter(portF)),
		openWitness(t, unix.SOCK_RAW, frLink.ifi.Index, sameFilter(portF)),
	}
	rx0, err := rxPackets("in0")
	if err != nil {
		t.Fatal(err)
	}
	// inflightIn0 reports whether frames that reached in0 have yet to
	// pass its packet sockets: all in0 receives is the soak's, and all of
	// that passes M's filter.
	inflightIn0 := func() bool {
		rx, err := rxPackets("in0")
		return err == nil && rx-rx0 != witM.count()
	}

	wireM, wireF := &wire{}, &wire{}
	consM := &soakConsumer{name: "M", flows: []uint8{flowM4, flowM4Churn, flowM6, flowM6Churn}}
	consF := &soakConsumer{name: "F", flows: []uint8{flowF4Frag, flowF6Frag, flowF4Lo, flowF6Lo}}
	streams := []*soakStream{
		{name: "M", s: sM, c: consM, wire: wireM},
		{name: "F", s: sF, c: consF, wire: wireF, stray: strayF},
	}

	start := time.Now()
	end := start.Add(dur)
	// Each consumer stalls for a quarter of the run (at least half a
	// second, at most three) in every period of twice that, the two out of
	// phase, and races once the traffic stops.
	stall := min(max(dur/4, 500*time.Millisecond), 3*time.Second)
	var consumers sync.WaitGroup
	consumers.Go(func() { consM.run(sM.Packets(), start, stall, 0, end, fails) })
	consumers.Go(func() { consF.run(sF.Packets(), start, stall, stall, end, fails) })

	var senders sync.WaitGroup
	var sentFlows [numFlows]atomic.Uint64
	var churnSent atomic.Uint64 // datagrams to M's coming-and-going addresses
	var curChurn atomic.Pointer[churnAddr]
	// pause holds M's senders while in0 changes state: a frame on its
	// way through in0 just then may reach one bound packet socket and
	// miss another, and M's accounting is checked against a witness.
	var pause sync.RWMutex

	// M: unfragmented datagrams on in0, IPv4 and IPv6, full rate.
	for _, fam := range []uint8{4, 6} {
		senders.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(fam), 1))
			flow, churnFlow := uint8(flowM4), uint8(flowM4Churn)
			if fam == 6 {
				flow, churnFlow = flowM6, flowM6Churn
			}
			var seq [numFlows]uint64
			for time.Now().Before(end) {
				pause.RLock()
				for range 32 {
					fl, dst, flags := flow, soakM4, byte(0)
					if fam == 6 {
						dst = soakM6
					}
					if ca := curChurn.Load(); ca != nil && rng.IntN(4) == 0 {
						fl, dst = churnFlow, ca.v4
						if fam == 6 {
							dst = ca.v6
						}
						if r := ca.removed.Load(); r != 0 && time.Since(time.Unix(0, r)) >= soakGoneGrace {
							flags = soakFlagGone
						}
						churnSent.Add(1)
					}
					seq[fl]++
					pl := soakPayload(fl, seq[fl], flags, soakMinLen+rng.IntN(1400-soakMinLen))
					var pkt []byte
					if fam == 4 {
						h := v4()
						h.src, h.dst = soakMP4.As4(), dst.As4()
						h.id = uint16(seq[fl])
						pkt = h.udp(40000+uint16(fl), portM, pl)
					} else {
						h := v6()
						h.src, h.dst = soakMP6.As16(), dst.As16()
						h.flow = uint32(seq[fl])
						pkt = h.udp(40000+uint16(fl), portM, pl)
					}
					if err := inLink.send(pkt, wireM); err != nil {
						fails.fail("inject on in1: %v", err)
						pause.RUnlock()
						return
					}
					sentFlows[fl].Add(1)
				}
				pause.RUnlock()
			}
		})
	}

	// F: fragmented datagrams on fr0, in order or reversed, from a few
	// sources per family so that IPv4's 16-bit IDs take many reassembly
	// timeouts to come round.
	senders.Go(func() {
		rng := rand.New(rand.NewPCG(3, 1))
		var seq [numFlows]uint64
		var ids [8]uint32
		for i := 0; time.Now().Before(end); i++ {
			fam, flow := uint8(4), uint8(flowF4Frag)
			src, dst := soakFP4.As4(), soakF4
			if i%2 == 1 {
				fam, flow = 6, flowF6Frag
			}
			k := i / 2 % 4
			seq[flow]++
			var s *reasmSent
			if fam == 4 {
				ids[k]++
				src[3] += byte(k)
				s = newReasmSent(4, netip.AddrFrom4(src), dst, ids[k], nil)
			} else {
				ids[4+k]++
				a := soakFP6.As16()
				a[15] += byte(k)
				s = newReasmSent(6, netip.AddrFrom16(a), soakF6, ids[4+k], nil)
			}
			s.payload = soakPayload(flow, seq[flow], 0, 1200+rng.IntN(4000))
			s.dport = portF
			s.seal()
			frags := s.split(512 << rng.IntN(2))
			if rng.IntN(3) == 0 {
				slices.Reverse(frags)
			}
			for _, fr := range frags {
				if err := frLink.send(fr, wireF); err != nil {
					fails.fail("inject on fr1: %v", err)
					return
				}
			}
			sentFlows[flow].Add(1)
		}
	})

	// F: first fragments from spoofed sources that never complete, from
	// 65,536 sources per family, each key used once.
	var floodSent atomic.Uint64
	senders.Go(func() {
		for k := uint32(0); time.Now().Before(end); k++ {
			var pkt []byte
			if k%2 == 0 {
				src := netip.AddrFrom4([4]byte{198, 18 + byte(k>>24&1), byte(k >> 9), byte(k >> 1)})
				s := newReasmSent(4, src, soakF4, k>>17, bigPayload(1400, byte(k)))
				s.dport = portF
				s.seal()
				pkt = s.fragment(0, 1024, true)
			} else {
				a := netip.MustParseAddr("2001:db8:ff::").As16()
				binary.BigEndian.PutUint16(a[14:], uint16(k>>1))
				s := newReasmSent(6, netip.AddrFrom16(a), soakF6, k, bigPayload(1400, byte(k)))
				s.dport = portF
				s.seal()
				pkt = s.fragment(0, 1024, true)
			}
			if err := frLink.send(pkt, wireF); err != nil {
				fails.fail("inject on fr1: %v", err)
				return
			}
			floodSent.Add(1)
			// About 20,000 a second: a flood to the reassembler, not to
			// the CPUs the rest of the soak needs.
			if k%200 == 199 {
				time.Sleep(10 * time.Millisecond)
			}
		}
	})

	// F: ordinary UDP sockets over loopback; a quarter of the datagrams
	// are larger than its MTU.
	for _, fam := range []uint8{4, 6} {
		network, addr, flow := "udp4", netip.MustParseAddr("127.0.0.1"), uint8(flowF4Lo)
		// The IP header, and the fragment data a 1500-byte packet carries.
		hdr, per := 20, 1480
		if fam == 6 {
			network, addr, flow, hdr, per = "udp6", netip.IPv6Loopback(), flowF6Lo, 40, 1448
		}
		c := udpSender(t, network, 64, 0)
		senders.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(fam), 2))
			to := netip.AddrPortFrom(addr, portF)
			for seq := uint64(1); time.Now().Before(end); seq++ {
				n := soakMinLen + rng.IntN(1000)
				if rng.IntN(4) == 0 {
					n = 2000 + rng.IntN(6000)
				}
				frames := uint64(1)
				if hdr+8+n > 1500 {
					frames = uint64((8 + n + per - 1) / per)
				}
				wireF.attempted.Add(frames)
				if _, err := c.WriteToUDPAddrPort(soakPayload(flow, seq, 0, n), to); err != nil {
					wireF.failed.Add(frames)
					if !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.ECONNREFUSED) {
						fails.fail("send over loopback: %v", err)
						return
					}
				}
				sentFlows[flow].Add(1)
			}
		})
	}

	// in0's addresses come and go: each lives 200 ms, then stays gone while
	// datagrams are still sent to it for 400 ms.
	var churnAddrs atomic.Int64
	var chaos sync.WaitGroup
	chaos.Go(func() {
		for k := 1; time.Now().Before(end); k++ {
			ca := &churnAddr{
				v4: netip.AddrFrom4([4]byte{10, 77, byte(k >> 8), byte(k)}),
				v6: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x0c, 14: byte(k >> 8), 15: byte(k)}),
			}
			if !soakIP(fails, "addr", "add", ca.v4.String()+"/32", "dev", "in0") ||
				!soakIP(fails, "-6", "addr", "add", ca.v6.String()+"/128", "dev", "in0", "nodad") {
				return
			}
			churnAddrs.Add(1)
			curChurn.Store(ca)
			time.Sleep(200 * time.Millisecond)
			if !soakIP(fails, "addr", "del", ca.v4.String()+"/32", "dev", "in0") ||
				!soakIP(fails, "-6", "addr", "del", ca.v6.String()+"/128", "dev", "in0") {
				return
			}
			ca.removed.Store(time.Now().UnixNano())
			time.Sleep(400 * time.Millisecond)
		}
	})

	// in0 goes down for 100 ms in every 700, with datagrams sent into the
	// void meanwhile. Around each change M's senders pause and the frames
	// already on their way are let through.
	var flaps atomic.Int64
	drainIn0 := func() bool {
		deadline := time.Now().Add(2 * time.Second)
		for inflightIn0() {
			if time.Now().After(deadline) {
				fails.fail("in0 received frames that never reached its packet sockets (or that the soak did not send)")
				return false
			}
			time.Sleep(time.Millisecond)
		}
		return true
	}
	chaos.Go(func() {
		for time.Now().Add(200 * time.Millisecond).Before(end) {
			time.Sleep(300 * time.Millisecond)
			pause.Lock()
			ok := drainIn0() && soakIP(fails, "link", "set", "in0", "down")
			pause.Unlock()
			if !ok {
				return
			}
			time.Sleep(100 * time.Millisecond)
			pause.Lock()
			ok = soakIP(fails, "link", "set", "in0", "up")
			pause.Unlock()
			if !ok {
				return
			}
			flaps.Add(1)
			time.Sleep(300 * time.Millisecond)
		}
	})

	// Streams on other ports, opened and closed all along, by Close or by
	// their context, each sent a few datagrams over loopback.
	var churned atomic.Int64
	for w := range soakChurners {
		c4, c6 := udpSender(t, "udp4", 64, 0), udpSender(t, "udp6", 64, 0)
		chaos.Go(func() {
			for i := 0; time.Now().Before(end); i++ {
				if !soakChurn(fails, w*7+i, c4, c6) {
					return
				}
				churned.Add(1)
			}
		})
	}

	// Samples: the invariants, and the footprint.
	var samples []resourceSample
	stopSampling := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
			case <-stopSampling:
				return
			}
			for _, ss := range streams {
				ss.sampleCheck(fails)
			}
			samples = append(samples, readResources(time.Since(start)))
		}
	})

	senders.Wait()
	chaos.Wait()
	close(stopSampling)
	sampler.Wait()
	quiesce(t)
	drainIn0()
	// Let the consumers catch up for a moment, so that the ending has
	// something to abandon only if they cannot.
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if stM, stF := sM.Stats(), sF.Stats(); stM.Pending == 0 && stF.Pending == 0 {
			break
		}
	}
	sM.Close()
	sF.Close()
	consumers.Wait()

	wM, wF, wFLater := witM.count(), witF.count(), witFLater.count()
	for _, ss := range streams {
		st := ss.s.Stats()
		ss.sampleCheck(fails)
		if err := ss.s.Err(); err != nil {
			t.Errorf("%s ended with %v", ss.name, err)
		}
		if got := ss.c.received.Load(); got != st.Delivered+st.DecodeErrors || st.Pending != 0 || st.DecodeErrors != 0 {
			t.Errorf("%s: consumer received %d; %+v", ss.name, got, st)
		}
	}
	stM, stF := sM.Stats(), sF.Stats()
	// M saw no fragment: every frame that reached it is counted once.
	if took := stM.Delivered + stM.DecodeErrors + stM.Dropped(); took != wM {
		t.Errorf("M: delivered %d + dropped %d = %d, but %d frames reached it: %+v", stM.Delivered, stM.Dropped(), took, wM, stM)
	}
	if stM.NotLocal > churnSent.Load() {
		t.Errorf("M: %d not local, more than the %d datagrams sent to addresses that come and go", stM.NotLocal, churnSent.Load())
	}
	// F: an unfragmented frame counts once; a fragment at most once (on
	// its own, or with its datagram); a datagram whose first fragment came
	// at least once. So the count lies between the frames that reached it
	// less the fragments after the first, and all the frames.
	if took := stF.Delivered + stF.DecodeErrors + stF.Dropped(); took > wF || took < wF-wFLater {
		t.Errorf("F: delivered %d + dropped %d = %d, outside [%d, %d] (%d frames reached it, %d of them fragments after the first): %+v",
			stF.Delivered, stF.Dropped(), took, wF-wFLater, wF, wF, wFLater, stF)
	}
	if sent := wireM.attempted.Load() - wireM.failed.Load(); wM > sent {
		t.Errorf("M's witness counted %d frames, more than the %d sent", wM, sent)
	}
	if sent := wireF.attempted.Load() - wireF.failed.Load() + streams[1].strays(); wF > sent {
		t.Errorf("F's witness counted %d frames, more than the %d sent (strays included)", wF, sent)
	}
	// Each kind of traffic got through at some point, or the soak tested
	// less than it claims.
	if consM.received.Load() == 0 || consF.received.Load() == 0 || consF.fragments.Load() == 0 || flaps.Load() == 0 || churned.Load() == 0 {
		t.Errorf("too little happened: M received %d, F %d (%d fragmented), %d flaps, %d streams churned",
			consM.received.Load(), consF.received.Load(), consF.fragments.Load(), flaps.Load(), churned.Load())
	}

	t.Logf("soak of %v (consumers stalling %v at a time): %d in0 flaps, %d addresses come and gone, %d streams on other ports opened and closed",
		dur, stall, flaps.Load(), churnAddrs.Load(), churned.Load())
	var flowLine strings.Builder
	for fl := range numFlows {
		fmt.Fprintf(&flowLine, " %d", sentFlows[fl].Load())
	}
	t.Logf("datagrams sent per flow (M4 M4-churn M6 M6-churn F4-frag F6-frag F4-lo F6-lo):%s; flood first fragments %d", flowLine.String(), floodSent.Load())
	t.Logf("M: %d frames on the wire, %d reached it; received %d (%d reordered); %s", wireM.attempted.Load()-wireM.failed.Load(), wM, consM.received.Load(), consM.reordered.Load(), soakStatsLine(stM))
	t.Logf("F: %d frames on the wire and %d strays, %d reached it (%d later fragments); received %d (%d fragmented, %d reordered); %s",
		wireF.attempted.Load()-wireF.failed.Load(), streams[1].strays(), wF, wFLater, consF.received.Load(), consF.fragments.Load(), consF.reordered.Load(), soakStatsLine(stF))
	soakReportTrends(t, samples)
}

// soakReportTrends logs the footprint at the start and end and its slopes,
// and fails a clear upward trend.
func soakReportTrends(t *testing.T, samples []resourceSample) {
	if len(samples) == 0 {
		return
	}
	first, last := samples[0], samples[len(samples)-1]
	for _, m := range []struct {
		lim trendLimit
		get func(resourceSample) float64
	}{
		{rssLimit, func(s resourceSample) float64 { return s.rss }},
		{goroutineLimit, func(s resourceSample) float64 { return s.goroutines }},
		{fdLimit, func(s resourceSample) float64 { return s.fds }},
	} {
		slope, allowed, ok := soakTrend(samples, m.get, m.lim)
		u := m.lim.unit
		t.Logf("%s: %.1f at %v, %.1f at %v; second half slope %+.2f/min (allowed %.2f/min)",
			m.lim.name, m.get(first)/u, first.at.Round(time.Millisecond), m.get(last)/u, last.at.Round(time.Millisecond), slope/u, allowed/u)
		if !ok {
			t.Errorf("%s climb %+.2f/min over the second half, more than %.2f/min: a leak", m.lim.name, slope/u, allowed/u)
		}
	}
}

// soakStatsLine lists a stream's non-zero counters.
func soakStatsLine(st Stats) string {
	var b strings.Builder
	v := reflect.ValueOf(st)
	for i := range v.NumField() {
		if n := v.Field(i).Uint(); n != 0 {
			fmt.Fprintf(&b, "%s %d, ", v.Type().Field(i).Tag.Get("json"), n)
		}
	}
	fmt.Fprintf(&b, "dropped %d", st.Dropped())
	return b.String()
}

// soakIP runs the ip command from a soak goroutine, reporting a failure.
func soakIP(f *soakFailures, args ...string) bool {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		f.fail("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		return false
	}
	return true
}

// soakChurn opens a stream on a free port with options chosen by i, sends
// it a few datagrams, reads for a moment, ends it (by Close or by its
// context) and checks that it ended clean and counted what it handed over.
func soakChurn(f *soakFailures, i int, c4, c6 *net.UDPConn) bool {
	opts := []Option{WithBufferSize(minBufferSize)}
	switch i % 4 {
	case 1:
		opts = append(opts, WithNetwork("udp4"))
	case 2:
		opts = append(opts, WithNetwork("udp6"), WithChannelCapacity(0))
	case 3:
		opts = append(opts, WithInterface("lo"))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := Open(ctx, 0, HeaderOnly, opts...)
	if err != nil {
		f.fail("churn: Open: %v", err)
		return false
	}
	for k := range 4 {
		c, a := c4, netip.MustParseAddr("127.0.0.1")
		if k%2 == 1 && i%4 != 1 {
			c, a = c6, netip.IPv6Loopback()
		}
		// Refusals are expected: the port may be closing already.
		_, _ = c.WriteToUDPAddrPort([]byte("churn"), netip.AddrPortFrom(a, s.Port()))
	}
	got := 0
	timeout := time.After(5 * time.Millisecond)
read:
	for {
		select {
		case <-s.Packets():
			got++
		case <-timeout:
			break read
		}
	}
	if i%2 == 0 {
		s.Close()
	} else {
		cancel()
	}
	for range s.Packets() {
		got++
	}
	<-s.Done()
	st := s.Stats()
	if s.Err() != nil || st.Pending != 0 || st.Delivered != uint64(got) {
		f.fail("churned stream %d: err %v, received %d, %+v", i, s.Err(), got, st)
	}
	return true
}

// TestSoakTrend checks the leak judge on made-up footprints: one that
// wobbles within the band passes at every length, even as one step from
// the bottom of the band to the top; one that gains a goroutine or fd per
// stream churned fails from 20 seconds on.
func TestSoakTrend(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	get := func(s resourceSample) float64 { return s.goroutines }
	const churnPerSecond = 5 // slower than the soak churns, even under -race
	for _, dur := range []time.Duration{3 * time.Second, 20 * time.Second, 10 * time.Minute, time.Hour} {
		for _, lim := range []trendLimit{goroutineLimit, fdLimit} {
			var flat, step, leaky []resourceSample
			for at := 250 * time.Millisecond; at <= dur; at += 250 * time.Millisecond {
				wobble := float64(rng.IntN(int(lim.band)+1)) - lim.band/2
				flat = append(flat, resourceSample{at: at, goroutines: 100 + wobble})
				var up float64
				if at > dur*3/4 {
					up = lim.band
				}
				step = append(step, resourceSample{at: at, goroutines: 100 + up})
				leaky = append(leaky, resourceSample{at: at, goroutines: 100 + wobble + churnPerSecond*at.Seconds()})
			}
			if slope, allowed, ok := soakTrend(flat, get, lim); !ok {
				t.Errorf("%v %s: a wobble within the band judged a leak: slope %.1f/min, allowed %.1f", dur, lim.name, slope, allowed)
			}
			if slope, allowed, ok := soakTrend(step, get, lim); !ok {
				t.Errorf("%v %s: one step of the band judged a leak: slope %.1f/min, allowed %.1f", dur, lim.name, slope, allowed)
			}
			if slope, allowed, ok := soakTrend(leaky, get, lim); ok && dur >= 20*time.Second {
				t.Errorf("%v %s: one per stream churned not judged a leak: slope %.1f/min, allowed %.1f", dur, lim.name, slope, allowed)
			}
		}
	}
}
