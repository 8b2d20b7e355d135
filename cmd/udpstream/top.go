package main

import (
	"cmp"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/udpstream/udpstream"
)

// The -top view: a screen refreshed each second with a row per source
// address. Plain ANSI escapes, which every terminal an ssh session reaches
// understands: the alternate screen (so that the shell's screen comes back
// as it was), a hidden cursor, home and erase.
const (
	escEnter = "\x1b[?1049h\x1b[?25l" // alternate screen, cursor hidden
	escLeave = "\x1b[?25h\x1b[?1049l" // cursor shown, main screen back
	escHome  = "\x1b[H"
	escEOL   = "\x1b[K" // erase to the end of the line
	escEOS   = "\x1b[J" // erase to the end of the screen
	escBold  = "\x1b[1m"
	escPlain = "\x1b[m"
)

// topRefresh is how often the view is redrawn.
const topRefresh = time.Second

// topSource is what the view knows of one source address.
type topSource struct {
	addr      netip.Addr
	count     uint64
	lastCount uint64 // count at the previous refresh, for the rate
	rate      float64
	ttls      [256]uint64
	ecn       [4]bool // codepoints seen
}

// ttlRange returns the lowest, highest and most common TTL or hop limit.
func (s *topSource) ttlRange() (lo, hi, mode int) {
	lo = -1
	for v, n := range s.ttls {
		if n == 0 {
			continue
		}
		if lo < 0 {
			lo = v
		}
		hi = v
		if n > s.ttls[mode] {
			mode = v
		}
	}
	return lo, hi, mode
}

// topView aggregates datagrams by source address and draws the screen.
type topView struct {
	sources map[netip.Addr]*topSource
	total   uint64
	port    uint16
	last    time.Time // of the previous refresh
}

func newTopView(port uint16, now time.Time) *topView {
	return &topView{sources: make(map[netip.Addr]*topSource), port: port, last: now}
}

// add counts a delivered datagram.
func (v *topView) add(h udpstream.Header) {
	a := h.Src.Addr().WithZone("") // one row per address, whatever the link
	s := v.sources[a]
	if s == nil {
		s = &topSource{addr: a}
		v.sources[a] = s
	}
	s.count++
	s.ttls[h.TTL]++
	s.ecn[h.ECN()] = true
	v.total++
}

// tick updates the rates for a refresh at now.
func (v *topView) tick(now time.Time) {
	d := now.Sub(v.last).Seconds()
	v.last = now
	for _, s := range v.sources {
		if d > 0 {
			s.rate = float64(s.count-s.lastCount) / d
		}
		s.lastCount = s.count
	}
}

// ecnMarks spells the ECN codepoints seen: N (Not-ECT), 1 (ECT(1)),
// 0 (ECT(0)), C (CE), each in its place or a dot.
func ecnMarks(seen [4]bool) string {
	b := []byte("....")
	for i, c := range "N10C" {
		if seen[i] {
			b[i] = byte(c)
		}
	}
	return string(b)
}

// topWidth is the width the rows are laid out for: any terminal is at
// least this wide, and a wider one shows the same.
const topWidth = 80

// render draws the screen for a terminal of height lines: a title, the
// column heads, the busiest sources that fit, and the drop counters.
func (v *topView) render(b []byte, st udpstream.Stats, height int) []byte {
	lines := make([]string, 0, height)
	lines = append(lines, fmt.Sprintf("udpstream -top  port %d  %s datagrams from %s", v.port, fmtCount(v.total), plural(uint64(len(v.sources)), "source")))
	lines = append(lines, fmt.Sprintf("%-39s %8s %7s %7s %4s %4s", "SOURCE", "DGRAMS", "RATE/s", "TTL", "MODE", "ECN"))

	rows := make([]*topSource, 0, len(v.sources))
	for _, s := range v.sources {
		rows = append(rows, s)
	}
	slices.SortFunc(rows, func(a, b *topSource) int {
		return cmp.Or(cmp.Compare(b.count, a.count), a.addr.Compare(b.addr))
	})
	const footer = 3
	room := max(height-len(lines)-footer, 1)
	spoofed := 0
	for i, s := range rows {
		lo, hi, mode := s.ttlRange()
		if lo != hi {
			spoofed++
		}
		if i >= room {
			continue
		}
		addr := s.addr.String()
		if len(addr) > 39 {
			addr = addr[:38] + "…"
		}
		ttl := fmt.Sprint(lo)
		mark := " "
		if lo != hi {
			// One source, several TTLs: more than one host sends as it,
			// or its packets take several paths.
			ttl, mark = fmt.Sprintf("%d-%d", lo, hi), "!"
		}
		row := strings.TrimRight(fmt.Sprintf("%-39s %8s %7.0f %7s %4d %4s %s", addr, fmtCount(s.count), s.rate, ttl, mode, ecnMarks(s.ecn), mark), " ")
		if mark != " " {
			row = escBold + row + escPlain
		}
		lines = append(lines, row)
	}
	if len(rows) > room {
		lines[len(lines)-1] = fmt.Sprintf("… and %d more sources", len(rows)-room+1)
	}
	for len(lines) < height-footer {
		lines = append(lines, "")
	}
	lines = append(lines, fmt.Sprintf("! TTL varies for %s (spoofing?)   ECN: N Not-ECT, 1 ECT(1), 0 ECT(0), C CE", plural(uint64(spoofed), "source")))
	var drops []string
	for _, r := range dropReasons {
		if n := r.count(st); n > 0 {
			drops = append(drops, fmt.Sprintf("%d %s", n, r.name))
		}
	}
	lines = append(lines, fmt.Sprintf("dropped %d, by the kernel %d", st.Dropped()-st.KernelDrops, st.KernelDrops))
	lines = append(lines, strings.Join(drops, ", "))

	b = append(b, escHome...)
	for i, l := range lines {
		b = append(b, truncate(l, topWidth)...)
		b = append(b, escEOL...)
		if i < len(lines)-1 {
			b = append(b, "\r\n"...) // no newline after the last: it would scroll
		}
	}
	return append(b, escEOS...)
}

// fmtCount shortens a count to fit its column: 12345678, 123.5M.
func fmtCount(n uint64) string {
	if n < 100_000_000 {
		return fmt.Sprint(n)
	}
	return fmt.Sprintf("%.1fM", float64(n)/1e6)
}

// truncate cuts s to width visible runes, escapes not counted.
func truncate(s string, width int) string {
	n, esc := 0, false
	for i, r := range s {
		switch {
		case esc:
			esc = r < '@' || r > '~'
		case r == '\x1b':
			esc = true
		default:
			if n == width {
				return s[:i] + escPlain
			}
			n++
		}
	}
	return s
}

// screen is the terminal while the view is on it. It is left once, by
// whichever comes first: the end of the view, or a signal that ends the
// program before the view has ended (see holdSignals).
type screen struct {
	mu   sync.Mutex
	w    io.Writer
	left bool
}

// Write draws b, unless the screen has been left.
func (sc *screen) Write(b []byte) (int, error) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.left {
		return len(b), nil
	}
	return sc.w.Write(b)
}

// leave gives the terminal back as it was: cursor shown, main screen.
func (sc *screen) leave() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if !sc.left {
		sc.left = true
		io.WriteString(sc.w, escLeave)
	}
}

// leaveTimeout bounds the wait for the screen to be left before a second
// signal ends the program: a terminal whose output is stopped (Ctrl-S, a
// stalled ssh) must not keep a second Ctrl-C from ending it.
const leaveTimeout = time.Second

// holdSignals keeps SIGINT and SIGTERM from ending the program while the
// view is on the screen, and returns the function that lets go. The first
// one asks for a clean end, which main's context sees and which ends the
// view; a second one, which main leaves to end the program at once, now
// ends it at once as well, by the same signal, but only after leaving the
// screen: without this, a second Ctrl-C while the stream closes would
// leave the terminal on the alternate screen with the cursor hidden.
func (sc *screen) holdSignals() (release func()) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		seen := 0
		for {
			select {
			case sig := <-sigs:
				if seen++; seen < 2 {
					continue
				}
				left := make(chan struct{})
				go func() {
					sc.leave()
					close(left)
				}()
				select {
				case <-left:
				case <-time.After(leaveTimeout):
				}
				dieBy(sig)
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(sigs)
		close(done)
	}
}

// dieBy ends the program by sig, as the signal's default action would,
// so that a shell sees it interrupted.
func dieBy(sig os.Signal) {
	signal.Reset(sig)
	if p, err := os.FindProcess(os.Getpid()); err == nil && p.Signal(sig) == nil {
		time.Sleep(leaveTimeout) // the signal is on its way
	}
	os.Exit(exitRuntime)
}

// runTop shows the view on w until ch closes or count datagrams arrived,
// calling each (if not nil) for every datagram, and returns the number of
// datagrams counted. The terminal is left as it was found whatever ends
// the view, signals included.
func runTop(ch <-chan udpstream.Packet[datagram], out io.Writer, port uint16, count int,
	stats func() udpstream.Stats, height func() int, each func(udpstream.Packet[datagram])) (uint64, error) {
	w := &screen{w: out}
	defer w.holdSignals()()
	if _, err := io.WriteString(w, escEnter); err != nil {
		return 0, err
	}
	defer w.leave()
	v := newTopView(port, time.Now())
	tick := time.NewTicker(topRefresh)
	defer tick.Stop()
	var buf []byte
	draw := func() error {
		buf = v.render(buf[:0], stats(), height())
		_, err := w.Write(buf)
		return err
	}
	if err := draw(); err != nil {
		return 0, err
	}
	for {
		select {
		case p, ok := <-ch:
			if !ok {
				return v.total, nil
			}
			if p.Err != nil {
				continue // error lines have no place on the screen
			}
			if each != nil {
				each(p)
			}
			v.add(p.Header)
			if count > 0 && v.total == uint64(count) {
				return v.total, nil
			}
		case now := <-tick.C:
			v.tick(now)
			if err := draw(); err != nil {
				return v.total, err
			}
		}
	}
}
