// Command udpstream prints the UDP datagrams addressed to one port, over
// IPv4 and IPv6 at once, with their IP headers: TTL or hop limit, TOS or
// traffic class, IPv4 ID and DF, IPv6 flow label, options and extension
// headers. With CAP_NET_RAW it receives through packet sockets and sees
// every header field (ring mode); without, it receives through its UDP
// socket and sees what the kernel's control messages tell (socket mode:
// not the IPv4 ID and DF, the UDP checksum or the fragment count).
// -mode kernel receives through packet sockets too but prints only the
// datagrams the kernel also delivered to the tool's UDP socket, so that
// the host's firewall and the kernel's rules decide (kernel-verdict mode).
// -mode ring, kernel or socket chooses; without -mode it runs ring mode
// where it may open packet sockets and socket mode otherwise. See -demo
// for a way to try ring mode without CAP_NET_RAW.
//
// Usage:
//
//	udpstream [-port N] [-i IFACE] [-4 | -6] [-join GROUP]... [-json] [-count N] [-port-errors] [-echo] [-stats] [-w FILE [-w-fragments]] [-B KiB] [-mode ring|kernel|socket]
//	udpstream -monitor -port N [...]
//	udpstream -top [-port N] [-i IFACE] [-4 | -6] [-count N] [-echo] [-stats]
//	udpstream -demo [-json] [-stats]
//
// Once it listens, the first line on stderr is
//
//	udpstream: listening on port N
//
// with the port actually bound, which is how a script learns the port that
// -port 0 picked, and the second
//
//	udpstream: mode M
//
// with the mode that runs, ring, kernel or socket. Then each datagram is one line on stdout, written as soon
// as no further datagram is waiting (so that a burst takes few writes and
// no line waits while the tool is idle): a readable line aligned for a terminal, or with -json one
// JSON object with the fields time, ifindex, ifname, family, src, sport,
// dst, dport, ttl, tos, id, df, flow, ip_options, ext_headers, fragments,
// udp_len, udp_checksum, len, payload, dscp, ecn (the RFC 3168 name:
// Not-ECT, ECT(1), ECT(0) or CE), hlim (the IPv6 hop limit, which ttl also
// gives; null for IPv4), and error on error lines only. Times are UTC.
// A field the mode cannot see is null: in socket mode id, df (IPv4) and
// udp_checksum always, and fragments of a fragmented datagram (and its
// ext_headers, which lack the Fragment header); the readable line shows
// "?" for them.
//
// -w FILE writes each delivered datagram to FILE as well, as a pcapng
// capture that Wireshark, tshark and tcpdump read: raw IP (LINKTYPE_RAW),
// one interface description per interface with its name, nanosecond
// timestamps from the kernel. A datagram that arrived in fragments is
// written whole, reassembled, as one packet; with -w-fragments it is
// written as the fragments it arrived in instead, each as received, in
// the order received, with its own time and interface, as tcpdump would
// have written them (a datagram that was not fragmented is written as
// ever). -w - writes the capture to stdout instead of the lines. With -w,
// delivered counts the datagrams written to the capture (with
// -w-fragments, a datagram whose last fragment was written).
//
// -top shows, instead of the lines, a view of the terminal refreshed each
// second: per source address the datagrams, their rate, the range and most
// common value of the TTL or hop limit, and the ECN codepoints seen; a
// source whose TTL varies is marked "!", since one host's datagrams to one
// port normally share a path and a TTL, and spoofed ones rarely match it.
// The drop counters are at the bottom. It draws on the alternate screen
// with plain ANSI escapes, so that on exit (Ctrl-C included) the terminal
// is as it was, with the summary below what was there; a second Ctrl-C,
// which ends it at once without the summary, gives the terminal back
// first.
//
// -join GROUP joins a multicast group, IPv4 or IPv6, on the interface of
// -i or on every interface that is up (and those that come up later), for
// as long as the tool runs; it may be given several times. Datagrams to
// the group are printed with the group as dst.
//
// It reserves the port with a socket of its own, so that the kernel does
// not answer ICMP port unreachable; -monitor instead observes a port that
// another process owns, without reserving it and without -echo.
//
// SIGINT and SIGTERM end it with status 0 after it has printed what was
// already received; so does a closed stdout, as after "| head -1". It then
// prints a summary on stderr, as tcpdump does, in lines that start with
// "udpstream: ": the datagrams delivered, those dropped with each reason
// that occurred, and the kernel's drops. With -stats it prints instead one
// JSON object of the same counters, on one line of its own: delivered
// (the datagrams printed, error lines excluded), dropped (the sum of every
// drop reason) and one counter per reason. -demo prints the object with
// -stats, and no summary.
//
// Exit status: 0 on success, 1 on a runtime error, 2 on a usage error.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/udpstream/udpstream"
)

func main() {
	// A closed stdout ("| head") then fails the write with EPIPE, which
	// ends the tool as normally as -count does, instead of killing it
	// before it prints the stats.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal has asked for a clean end, a second one ends
	// the program at once, as the user expects of a second Ctrl-C (-top
	// holds the signals while it is on the screen, to leave it first).
	context.AfterFunc(ctx, stop)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit statuses.
const (
	exitOK      = 0
	exitRuntime = 1
	exitUsage   = 2
)

// options are the parsed command line.
type options struct {
	port       int
	iface      string
	only4      bool
	only6      bool
	json       bool
	count      int
	portErrors bool
	echo       bool
	stats      bool
	demo       bool
	monitor    bool
	write      string // -w: the capture file, "-" for stdout
	wFragments bool   // -w-fragments: each fragment as received, not the datagram reassembled
	top        bool
	bufferKiB  int          // -B: the kernel ring per family
	mode       string       // -mode: "ring", "socket", or "" to choose
	join       []netip.Addr // -join, in the order given
}

// defaultBufferKiB is the command's kernel ring per address family: four
// times the library's default, since a capture tool is run to keep a burst
// whole, and the memory is the user's to trade (-B) as with tcpdump's.
const defaultBufferKiB = 4 * udpstream.DefaultBufferSize >> 10

// usageError is a command line the tool cannot act on.
type usageError string

func (e usageError) Error() string { return string(e) }

// parseArgs parses the command line. It returns flag.ErrHelp, after
// printing the help on stderr, when the user asked for it.
func parseArgs(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("udpstream", flag.ContinueOnError)
	// The flag package's own report is several lines; the tool prints one.
	fs.SetOutput(io.Discard)
	fs.IntVar(&o.port, "port", 0, "UDP `port` to receive; 0 picks a free one")
	fs.StringVar(&o.iface, "i", "", "receive only on `interface` (default: all)")
	fs.BoolVar(&o.only4, "4", false, "IPv4 only")
	fs.BoolVar(&o.only6, "6", false, "IPv6 only")
	fs.BoolVar(&o.json, "json", false, "print one JSON object per datagram")
	fs.IntVar(&o.count, "count", 0, "exit after `n` datagrams (error lines do not count; 0: no limit)")
	fs.BoolVar(&o.portErrors, "port-errors", false, "also print datagrams to other ports, as error lines")
	fs.BoolVar(&o.echo, "echo", false, "reply to each datagram with its payload")
	fs.BoolVar(&o.stats, "stats", false, "print counters as one JSON object on stderr at exit")
	fs.BoolVar(&o.demo, "demo", false, "send datagrams to itself over 127.0.0.1, ::1 and the mDNS group on loopback, print them and exit")
	fs.StringVar(&o.write, "w", "", "write each delivered datagram to a pcapng `file` (\"-\": stdout, instead of the lines): the whole IP datagram, reassembled when it came in fragments")
	fs.BoolVar(&o.wFragments, "w-fragments", false, "with -w, write a datagram that arrived in fragments as those fragments, each as received with its own time and interface, instead of reassembled")
	fs.BoolVar(&o.top, "top", false, "show a live view in the terminal instead of the lines: per source address the datagrams, rate, TTL range (marked when it varies) and ECN marks; and the drops")
	fs.IntVar(&o.bufferKiB, "B", defaultBufferKiB, "kernel receive ring per address family, in `KiB`")
	fs.BoolVar(&o.monitor, "monitor", false, "observe a port another process owns, without reserving it (needs -port N; no -echo)")
	fs.StringVar(&o.mode, "mode", "", "receive through packet sockets (`ring`, needs CAP_NET_RAW, every header field), through packet sockets keeping only what the kernel delivers to the UDP socket (kernel: the firewall and the kernel's rules decide), or through the UDP socket (socket: no privilege, no IPv4 ID or DF, UDP checksum or fragment count); default ring where packet sockets can be opened, socket otherwise")
	fs.Func("join", "join the multicast `group` (repeatable), on the interface of -i or on every one that is up", func(v string) error {
		g, err := netip.ParseAddr(v)
		switch {
		case err != nil || !g.IsMulticast():
			return fmt.Errorf("%q is not a multicast group", v)
		case g.Zone() != "":
			return fmt.Errorf("%q: give the interface with -i, not as a zone", v)
		}
		o.join = append(o.join, g)
		return nil
	})

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "usage: udpstream [-port N] [-i IFACE] [-4 | -6] [-join GROUP]... [-json] [-count N] [-port-errors] [-echo] [-stats] [-w FILE [-w-fragments]] [-B KiB] [-mode ring|kernel|socket]")
			fmt.Fprintln(stderr, "       udpstream -monitor -port N [...]   (a port another process owns)")
			fmt.Fprintln(stderr, "       udpstream -top [...]               (a live view of the sources)")
			fmt.Fprintln(stderr, "       udpstream -demo [-json] [-stats]")
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return o, err
		}
		return o, usageError(err.Error() + " (see udpstream -h)")
	}
	var given []string // in lexical order
	fs.Visit(func(f *flag.Flag) { given = append(given, f.Name) })

	switch {
	case fs.NArg() > 0:
		return o, usageError(fmt.Sprintf("unexpected argument %q: the port is given with -port", fs.Arg(0)))
	case o.port < 0 || o.port > 65535:
		return o, usageError(fmt.Sprintf("-port %d: want 0 to 65535 (0 picks a free port)", o.port))
	case o.only4 && o.only6:
		return o, usageError("-4 and -6 exclude each other: give one, or neither for both families")
	case o.count < 0:
		return o, usageError(fmt.Sprintf("-count %d: want a positive number, or 0 for no limit", o.count))
	case o.bufferKiB < 128 || o.bufferKiB > 1<<20:
		return o, usageError(fmt.Sprintf("-B %d: want 128 to 1048576 KiB", o.bufferKiB))
	case slices.Contains(given, "i") && o.iface == "":
		return o, usageError("-i needs an interface name (see ip link)")
	case o.monitor && o.port == 0 && !o.demo:
		return o, usageError("-monitor needs -port N, the port of the process to observe")
	case o.write == "-" && o.json:
		return o, usageError("-w - writes the capture to stdout, where -json would print its lines: give -w a file name")
	case o.write == "-" && o.portErrors:
		return o, usageError("-w - writes the capture to stdout and -port-errors prints lines, which it leaves out: give -w a file name")
	case slices.Contains(given, "w") && o.write == "":
		return o, usageError("-w needs a file name, or - for stdout")
	case o.wFragments && o.write == "":
		return o, usageError("-w-fragments says how -w writes fragmented datagrams: give -w FILE too")
	case o.top && (o.json || o.write != ""):
		return o, usageError("-top draws the terminal instead of printing lines: it takes neither -json nor -w")
	case o.mode != "" && o.mode != "ring" && o.mode != "kernel" && o.mode != "socket":
		return o, usageError(fmt.Sprintf("-mode %q: want ring, kernel or socket", o.mode))
	case o.mode == "kernel" && o.monitor:
		return o, usageError("-mode kernel needs the port's socket, which -monitor leaves to its owner: use -mode ring")
	case o.mode == "socket" && o.write != "":
		return o, usageError("-w writes whole IP datagrams, which -mode socket does not receive: use -mode ring")
	case o.mode == "socket" && (o.monitor || o.portErrors):
		return o, usageError("-monitor and -port-errors need packet sockets: use -mode ring")
	case o.only6 && slices.ContainsFunc(o.join, netip.Addr.Is4):
		return o, usageError("-6 and an IPv4 -join group exclude each other")
	case o.only4 && slices.ContainsFunc(o.join, netip.Addr.Is6):
		return o, usageError("-4 and an IPv6 -join group exclude each other")
	case o.monitor && o.echo:
		// A monitor holds no socket on the port to reply from.
		return o, usageError("-monitor and -echo exclude each other: the port's owner answers, not udpstream")
	}
	if o.demo {
		for _, name := range given {
			if name != "demo" && name != "json" && name != "stats" {
				return o, usageError("-demo takes only -json and -stats, not -" + name)
			}
		}
	}
	return o, nil
}

// streamOptions translates the command line into the library's options.
func (o options) streamOptions() []udpstream.Option {
	opts := []udpstream.Option{udpstream.WithBufferSize(o.bufferKiB << 10)}
	if o.iface != "" {
		opts = append(opts, udpstream.WithInterface(o.iface))
	}
	switch {
	case o.only4:
		opts = append(opts, udpstream.WithNetwork("udp4"))
	case o.only6:
		opts = append(opts, udpstream.WithNetwork("udp6"))
	}
	if o.portErrors {
		opts = append(opts, udpstream.WithPortErrors())
	}
	if o.monitor {
		opts = append(opts, udpstream.WithMonitor())
	}
	if o.wFragments {
		opts = append(opts, udpstream.WithFragments())
	}
	switch {
	case o.mode == "socket":
		opts = append(opts, udpstream.WithMode(udpstream.ModeSocket))
	case o.mode == "kernel":
		opts = append(opts, udpstream.WithMode(udpstream.ModeKernel))
	case o.mode == "" && o.write == "":
		// A capture needs the IP header bytes only the ring receives.
		opts = append(opts, udpstream.WithMode(udpstream.ModeAuto))
	}
	if len(o.join) > 0 {
		opts = append(opts, udpstream.WithJoin(o.join...))
	}
	return opts
}

// run is the whole tool: main only adds the process's signals, arguments,
// output and exit. It returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "udpstream: %v\n", err)
		return exitUsage
	}
	if o.demo {
		return runDemo(ctx, o, args, stdout, stderr)
	}
	return listen(ctx, o, stdout, stderr)
}

// outputBuffer is the size of the buffers stdout and a capture file are
// written through: a burst goes out in a few writes rather than one per
// datagram.
const outputBuffer = 64 << 10

// datagram is what the command keeps of each datagram: its payload, and
// with -w the whole IP datagram too, or with -w-fragments the fragments it
// arrived in.
type datagram struct {
	ip      []byte // with -w: the bytes udpstream.Raw returns; nil where frags are written instead
	frags   []udpstream.Fragment
	payload []byte
}

// decodePayload keeps the payload only, as udpstream.Payload does.
func decodePayload(d *udpstream.Datagram) (datagram, error) {
	p, err := udpstream.Payload(d)
	return datagram{payload: p}, err
}

// decodeCapture keeps the payload, and the whole IP datagram, reassembled,
// or, on a stream opened udpstream.WithFragments, the fragments it arrived
// in, all in one allocation.
func decodeCapture(d *udpstream.Datagram) (datagram, error) {
	var dg datagram
	ip, frags := d.IP(), d.Fragments()
	if len(frags) > 0 {
		ip = nil
		dg.frags = make([]udpstream.Fragment, len(frags))
	}
	n := len(ip) + len(d.Payload())
	for _, f := range frags {
		n += len(f.IP)
	}
	b := make([]byte, 0, n)
	keep := func(v []byte) []byte {
		b = append(b, v...)
		return b[len(b)-len(v) : len(b) : len(b)]
	}
	dg.ip = keep(ip)
	for i, f := range frags {
		dg.frags[i] = udpstream.Fragment{IP: keep(f.IP), IfIndex: f.IfIndex, Time: f.Time}
	}
	dg.payload = keep(d.Payload())
	return dg, nil
}

// output is where listen writes: lines on stdout and a capture file, each
// through a buffer that pump flushes, and a tally under each that counts
// what reached it.
type output struct {
	lines      *printer // nil with -w -
	lineBuf    *bufio.Writer
	printed    *tally
	capture    *pcapngWriter // nil without -w
	captureBuf *bufio.Writer
	captured   *tally
	file       *os.File // the capture file; nil for stdout or none
	names      ifNames
}

// newOutput prepares the output o asks for. The capture file, if any, is
// created here, before the stream opens, so that a bad path costs nothing.
func newOutput(o options, stdout io.Writer) (*output, error) {
	out := &output{names: ifNames{lookup: interfaceName}}
	if o.write != "-" {
		out.printed = &tally{w: stdout}
		out.lineBuf = bufio.NewWriterSize(out.printed, outputBuffer)
		out.lines = newPrinter(out.lineBuf, o.json)
	}
	if o.write != "" {
		w := stdout
		if o.write != "-" {
			f, err := os.Create(o.write)
			if err != nil {
				return nil, err
			}
			out.file, w = f, f
		}
		out.captured = &tally{w: w}
		out.captureBuf = bufio.NewWriterSize(out.captured, outputBuffer)
		out.capture = newPcapngWriter()
		h := out.capture.header()
		out.captured.add(len(h), false)
		out.captureBuf.Write(h) // an error stays in the buffer, for flush
	}
	return out, nil
}

// packet writes p's line and, if it is a delivered datagram, its capture
// records: the datagram, or the fragments it arrived in.
func (out *output) packet(p udpstream.Packet[datagram]) error {
	if out.capture != nil && p.Err == nil {
		for i, f := range p.Value.frags {
			// The datagram is in the capture once its last fragment is.
			if err := out.record(f.IfIndex, f.Time, f.IP, i == len(p.Value.frags)-1); err != nil {
				return err
			}
		}
		if p.Value.frags == nil {
			if err := out.record(p.Header.IfIndex, p.Header.Time, p.Value.ip, true); err != nil {
				return err
			}
		}
	}
	if out.lines != nil {
		line, err := out.lines.line(udpstream.Packet[[]byte]{Value: p.Value.payload, Header: p.Header, Err: p.Err})
		if err != nil {
			return err
		}
		out.printed.add(len(line), p.Err == nil)
		if _, err := out.lineBuf.Write(line); err != nil {
			return err
		}
	}
	return nil
}

// record writes one packet of the capture, received on interface ifindex
// at the given time; last says it completes a delivered datagram.
func (out *output) record(ifindex int, at time.Time, ip []byte, last bool) error {
	name := out.names.name(ifindex, time.Now())
	b := out.capture.packet(ifindex, name, at, ip)
	out.captured.add(len(b), last)
	if _, err := out.captureBuf.Write(b); err != nil {
		return out.captureError(err)
	}
	return nil
}

// flush writes out what the buffers hold.
func (out *output) flush() error {
	if out.capture != nil {
		if err := out.captureBuf.Flush(); err != nil {
			return out.captureError(err)
		}
	}
	if out.lines != nil {
		return out.lineBuf.Flush()
	}
	return nil
}

// close flushes and closes the capture file.
func (out *output) close() error {
	err := out.flush()
	if out.file != nil {
		if cerr := out.file.Close(); err == nil && cerr != nil {
			err = out.captureError(cerr)
		}
	}
	return err
}

// captureError names the capture file in an error writing it.
func (out *output) captureError(err error) error {
	if out.file == nil {
		return err // stdout, as for lines
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		return err // names the file already
	}
	return fmt.Errorf("%s: %w", out.file.Name(), err)
}

// delivered is the number of datagrams the output holds: those written to
// the capture with -w, else the lines printed.
func (out *output) delivered() uint64 {
	if out.capture != nil {
		return out.captured.written
	}
	return out.printed.written
}

// listen prints the stream's datagrams until the context ends, -count is
// reached or the stream fails.
func listen(ctx context.Context, o options, stdout, stderr io.Writer) int {
	out, err := newOutput(o, stdout)
	if err != nil {
		return fail(stderr, fmt.Errorf("-w: %w", err))
	}
	dec := decodePayload
	if out.capture != nil {
		dec = decodeCapture
	}
	s, err := udpstream.Open(ctx, uint16(o.port), dec, o.streamOptions()...)
	if err != nil {
		out.close()
		switch {
		case ctx.Err() != nil:
			return exitOK // interrupted before it began
		case o.iface != "" && errors.Is(err, syscall.ENODEV):
			// The library's line ends in the errno's text; the user
			// needs only the name and where to look.
			return fail(stderr, fmt.Errorf("no interface %q (see ip link)", o.iface))
		case errors.Is(err, syscall.EADDRINUSE) && !o.monitor:
			// The library's advice names its option; the user of the
			// command needs the flag.
			return fail(stderr, fmt.Errorf("port %d is in use by another process: -monitor observes a port another process owns", o.port))
		}
		return fail(stderr, err)
	}
	defer s.Close()
	fmt.Fprintf(stderr, "udpstream: listening on port %d\nudpstream: mode %v\n", s.Port(), s.Mode())

	if o.top {
		return showTop(s, o, stdout, stderr)
	}
	var delivered uint64 // handed to the output; out.delivered says which of them reached it
	// After cancellation the channel still holds what was received; the
	// loop drains it and ends when the stream closes it.
	err = pump(s.Packets(), func(p udpstream.Packet[datagram]) (bool, error) {
		if p.Err != nil && p.Header.Version == 0 {
			return true, nil // the stream's last word; s.Err reports it below
		}
		if o.echo && p.Err == nil {
			if err := p.Reply(p.Value.payload); err != nil {
				warn(stderr, fmt.Errorf("echo to %v: %w", p.Header.Src, err))
			}
		}
		if err := out.packet(p); err != nil {
			return false, err
		}
		if p.Err == nil {
			delivered++
			if o.count > 0 && delivered == uint64(o.count) {
				return false, nil
			}
		}
		return true, nil
	}, out.flush)
	if cerr := out.close(); err == nil {
		err = cerr
	}
	if err != nil && !outputClosed(err) {
		s.Close()
		return fail(stderr, fmt.Errorf("writing output: %w", err))
	}
	// Close waits until the stream has ended, so that Err and Stats are
	// final.
	s.Close()
	if o.stats {
		printStats(stderr, s.Stats(), out.delivered())
	} else {
		printSummary(stderr, s.Stats(), out.delivered(), s.Mode())
	}
	if err := s.Err(); err != nil {
		return fail(stderr, err)
	}
	return exitOK
}

// showTop runs the -top view until the stream ends or -count is reached,
// then prints the summary as listen does.
func showTop(s *udpstream.Stream[datagram], o options, stdout, stderr io.Writer) int {
	var echo func(udpstream.Packet[datagram])
	if o.echo {
		echo = func(p udpstream.Packet[datagram]) {
			// No warning: stderr shares the screen the view draws.
			_ = p.Reply(p.Value.payload)
		}
	}
	n, err := runTop(s.Packets(), stdout, s.Port(), o.count, s.Stats, func() int { return terminalHeight(stdout) }, echo)
	s.Close()
	if o.stats {
		printStats(stderr, s.Stats(), n)
	} else {
		printSummary(stderr, s.Stats(), n, s.Mode())
	}
	if err != nil && !outputClosed(err) {
		return fail(stderr, fmt.Errorf("writing output: %w", err))
	}
	if err := s.Err(); err != nil {
		return fail(stderr, err)
	}
	return exitOK
}

// pump hands each packet of ch to each until each returns false or an
// error, or ch is closed. It calls flush whenever ch holds no further
// packet, before it waits for one, and at the end: output is buffered
// while datagrams keep coming, and none of it waits while the tool is
// idle. A line the reader sees late is one it cannot act on.
func pump[T any](ch <-chan udpstream.Packet[T], each func(udpstream.Packet[T]) (bool, error), flush func() error) error {
	for p := range ch {
		more, err := each(p)
		if err != nil {
			return err
		}
		if !more {
			break
		}
		if len(ch) == 0 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// outputClosed reports whether a write failed because the reader of the
// output has gone, as "| head" does once it has what it wants: the end of
// the run, not a failure.
func outputClosed(err error) bool { return errors.Is(err, syscall.EPIPE) }

// message formats err as the tool's messages do, without repeating the
// library's own "udpstream: " prefix.
func message(err error) string {
	return "udpstream: " + strings.TrimPrefix(err.Error(), "udpstream: ")
}

// fail prints err as one line on stderr and returns the runtime error
// status.
func fail(stderr io.Writer, err error) int {
	fmt.Fprintln(stderr, message(err))
	return exitRuntime
}

// warn prints err as one line on stderr; the tool goes on.
func warn(stderr io.Writer, err error) {
	fmt.Fprintln(stderr, message(err))
}
