//go:build linux

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// errHelp is returned by parseConfig when -h asked for the usage.
var errHelp = flag.ErrHelp

// config is what the command line asks of a run of the bench.
type config struct {
	count      int // datagrams per receiver, run and round
	rounds     int
	pingPong   int // round trips per server, family and round
	sizes      []int
	families   []int
	floods     []bool
	sources    []int // many-sources runs: source addresses of each; none without -sources
	fragPcts   []int // and the percentages of datagrams fragmented
	receivers  []string
	port       int // traffic; +1 flood UDP, +2 flood TCP, +3 ping-pong
	idle       time.Duration
	timeout    time.Duration
	jsonOut    string
	profileDir string
	quick      bool
	capture    bool          // the capture comparison instead of the receivers
	quiet      time.Duration // a capture is quiet after this long without growth
	verbose    bool
	args       []string
}

// maxPayload is the largest payload the bench sends: every receiver's
// buffer (and udpstream's ring slot) holds it whole, headers included.
const maxPayload = 1900

// Sizes of the quick smoke run.
const (
	quickCount    = 3000
	quickRounds   = 1
	quickPingPong = 200
)

func parseConfig(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: go run . [flags]   (in the bench directory)\n\n"+
			"Runs every receiver on the same loopback traffic in a network namespace of\n"+
			"its own, prints a table and pass/fail lines, and writes JSON.\n\nflags:\n")
		fs.PrintDefaults()
	}
	fs.IntVar(&c.count, "count", 200000, "datagrams the sender sends to each receiver in each run and round")
	fs.IntVar(&c.rounds, "rounds", 3, "rounds; each goes through every run and receiver, the order rotated")
	fs.IntVar(&c.pingPong, "pingpong", 1000, "ping-pong round trips per server, family and round (0 skips it)")
	sizes := fs.String("sizes", "64,1400", fmt.Sprintf("UDP payload sizes in bytes, comma-separated, up to %d", maxPayload))
	families := fs.String("families", "4,6", "IP versions, comma-separated")
	flood := fs.String("flood", "both", "runs without and with the flood: both, off or on")
	sources := fs.String("sources", "", "instead of the ordinary runs, many-sources runs: source addresses of each, comma-separated, "+
		"sent from a raw socket (say 1,1000,100000)")
	fragmented := fs.String("fragmented", "0", "with -sources: percentages of the datagrams sent in two fragments, comma-separated")
	receivers := fs.String("receivers", "all", "receivers to run, comma-separated, from: "+strings.Join(receiverNames, ",")+
		"; with -capture from: "+strings.Join(captureNames, ","))
	fs.IntVar(&c.port, "port", 40000, "UDP port of the traffic; the three above it are used too")
	fs.DurationVar(&c.idle, "idle", 300*time.Millisecond, "a receiver stops this long after its last datagram once the sender is done")
	fs.DurationVar(&c.timeout, "timeout", time.Minute, "bound on each measurement's sending and receiving")
	fs.StringVar(&c.jsonOut, "json-out", "bench-results.json", "write the results as JSON to `file` (empty: do not)")
	fs.StringVar(&c.profileDir, "cpuprofile-dir", "", "write a CPU profile of every receiver process to `dir` (skews the figures a little)")
	fs.BoolVar(&c.quick, "quick", false, fmt.Sprintf("smoke run: -count %d -rounds %d -pingpong %d unless set", quickCount, quickRounds, quickPingPong))
	fs.BoolVar(&c.verbose, "v", false, "pass the children's standard error through")
	fs.BoolVar(&c.capture, "capture", false, "compare the udpstream command's -json and -w files with tcpdump -w over a veth pair, instead of the receivers; "+
		"-sizes 64 -families 4 unless set")
	fs.DurationVar(&c.quiet, "quiet", 2*time.Second, "with -capture: a capture is stopped once its file and CPU time have not grown for this long")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, usageErr(fs, "unexpected arguments: %q", fs.Args())
	}
	c.args = args
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if c.capture {
		// The burst: 64-byte datagrams over IPv4.
		if !set["sizes"] {
			*sizes = "64"
		}
		if !set["families"] {
			*families = "4"
		}
	}
	if c.quick {
		if !set["count"] {
			c.count = quickCount
		}
		if !set["rounds"] {
			c.rounds = quickRounds
		}
		if !set["pingpong"] {
			c.pingPong = quickPingPong
		}
	}
	var err error
	if c.sizes, err = intList(*sizes, 1, maxPayload); err != nil {
		return c, usageErr(fs, "-sizes: %v", err)
	}
	if c.families, err = intList(*families, 4, 6); err != nil || slices.ContainsFunc(c.families, func(f int) bool { return f != 4 && f != 6 }) {
		return c, usageErr(fs, "-families: want 4, 6 or 4,6")
	}
	if *sources != "" {
		if c.sources, err = intList(*sources, 1, 1<<24); err != nil {
			return c, usageErr(fs, "-sources: %v", err)
		}
		if c.fragPcts, err = intList(*fragmented, 0, 100); err != nil {
			return c, usageErr(fs, "-fragmented: %v", err)
		}
	}
	switch *flood {
	case "both":
		c.floods = []bool{false, true}
	case "off":
		c.floods = []bool{false}
	case "on":
		c.floods = []bool{true}
	default:
		return c, usageErr(fs, "-flood: want both, off or on")
	}
	names := receiverNames
	if c.capture {
		names = captureNames
	}
	if *receivers == "all" {
		c.receivers = names
	} else {
		for r := range strings.SplitSeq(*receivers, ",") {
			if !slices.Contains(names, r) {
				return c, usageErr(fs, "-receivers: unknown receiver %q", r)
			}
			if !slices.Contains(c.receivers, r) {
				c.receivers = append(c.receivers, r)
			}
		}
	}
	switch {
	case c.count < 1:
		return c, usageErr(fs, "-count must be positive")
	case c.rounds < 1:
		return c, usageErr(fs, "-rounds must be positive")
	case c.pingPong < 0:
		return c, usageErr(fs, "-pingpong must not be negative")
	case c.port < 1 || c.port > 65535-3:
		return c, usageErr(fs, "-port must leave room for three ports above it")
	case c.idle <= 0 || c.timeout <= 0 || c.quiet <= 0:
		return c, usageErr(fs, "-idle, -quiet and -timeout must be positive")
	}
	return c, nil
}

func usageErr(fs *flag.FlagSet, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	fmt.Fprintf(fs.Output(), "bench: %v\n", err)
	return err
}

// intList parses comma-separated integers within [lo, hi].
func intList(s string, lo, hi int) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		if n < lo || n > hi {
			return nil, fmt.Errorf("%d is not within %d to %d", n, lo, hi)
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("empty list")
	}
	return out, nil
}
