//go:build linux

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// runSpec is one kind of traffic: a payload size and family, quiet or
// under the flood.
type runSpec struct {
	Name   string `json:"name"`
	Size   int    `json:"size"`
	Family int    `json:"family"`
	Flood  bool   `json:"flood"`
	// Sources is the number of source addresses of a many-sources run,
	// whose datagrams are sent by manySources, FragPct of every 100 of
	// them in two fragments; 0 in the ordinary runs.
	Sources int `json:"sources,omitempty"`
	FragPct int `json:"fragmented_pct,omitempty"`
}

func (r runSpec) title() string {
	f := "quiet"
	if r.Flood {
		f = "under flood"
	}
	t := fmt.Sprintf("%d B payload, IPv%d, %s", r.Size, r.Family, f)
	if r.Sources > 0 {
		t += fmt.Sprintf(", %d sources, %d %% fragmented (raw socket)", r.Sources, r.FragPct)
	}
	return t
}

// runSpecs returns the runs of a configuration, in table order.
func runSpecs(cfg config) []runSpec {
	sources, frags := cfg.sources, cfg.fragPcts
	if len(sources) == 0 {
		sources, frags = []int{0}, []int{0}
	}
	var out []runSpec
	for _, size := range cfg.sizes {
		for _, fam := range cfg.families {
			for _, flood := range cfg.floods {
				for _, frag := range frags {
					for _, n := range sources {
						r := runSpec{Size: size, Family: fam, Flood: flood, Sources: n, FragPct: frag}
						r.Name = fmt.Sprintf("%dB-ipv%d-%s", size, fam, map[bool]string{false: "quiet", true: "flood"}[flood])
						if n > 0 {
							r.Name += fmt.Sprintf("-src%d-frag%d", n, frag)
						}
						out = append(out, r)
					}
				}
			}
		}
	}
	return out
}

// measurement is one receiver's figures in one run and round.
type measurement struct {
	Receiver string `json:"receiver"`
	Round    int    `json:"round"`

	Sent      uint64 `json:"sent"`
	Delivered uint64 `json:"delivered"`
	Lost      uint64 `json:"lost"`
	Other     uint64 `json:"other"` // frames the receiver read that were not the traffic
	Stop      string `json:"stop"`  // why the receiver stopped: count, idle or timeout

	RecvUserNS   int64  `json:"recv_user_ns"` // receiver process, first datagram to end
	RecvSystemNS int64  `json:"recv_system_ns"`
	RecvSwitches int64  `json:"recv_switches"` // receiver's context switches, voluntary and not
	SpanNS       int64  `json:"span_ns"`       // first to last datagram
	Rate         figure `json:"rate"`          // delivered per second over the span

	MachineBusyNS int64  `json:"machine_busy_ns"`     // all CPUs, /proc/stat, over the window
	WindowNS      int64  `json:"window_ns"`           // sender start to the sample after the last datagram
	SendCPUNS     int64  `json:"send_cpu_ns"`         // the sending thread, loopback delivery included
	SendProcessNS int64  `json:"send_process_cpu_ns"` // the whole sending (orchestrator) process
	SendRate      figure `json:"send_rate"`

	RecvCPUPerDatagram    figure `json:"recv_cpu_ns_per_datagram"`
	MachineCPUPerDatagram figure `json:"machine_cpu_ns_per_datagram"`

	Extra map[string]uint64 `json:"extra,omitempty"`
	Error string            `json:"error,omitempty"`
}

// orchestrator runs the bench in the namespace.
type orchestrator struct {
	cfg     config
	clock   monoClock
	busy    *busySampler
	stderr  io.Writer
	verbose io.Writer // children's standard error, when -v
}

// orchestrate is the orchestrator role: it runs in the namespace that
// enterNamespace created, and prints and writes the results.
func orchestrate(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		return exitUsage
	}
	if err := prepareNamespace(); err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
	if cfg.profileDir != "" {
		if err := os.MkdirAll(cfg.profileDir, 0o755); err != nil {
			fmt.Fprintf(stderr, "bench: %v\n", err)
			return 1
		}
	}
	o := &orchestrator{cfg: cfg, clock: newMonoClock(), stderr: stderr}
	if cfg.verbose {
		o.verbose = stderr
	}
	o.busy = startBusySampler(o.clock, 10*time.Millisecond)
	var rep *report
	if cfg.capture {
		rep = o.runCapture()
	} else {
		rep = o.run()
	}
	if err := o.busy.close(); err != nil {
		rep.Meta.Notes = append(rep.Meta.Notes, "reading /proc/stat: "+err.Error())
	}
	rep.evaluate()

	printReport(stdout, rep)
	if cfg.jsonOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err == nil {
			err = os.WriteFile(cfg.jsonOut, append(b, '\n'), 0o644)
		}
		if err != nil {
			fmt.Fprintf(stderr, "bench: writing %s: %v\n", cfg.jsonOut, err)
			return 1
		}
		fmt.Fprintf(stdout, "\nJSON: %s\n", cfg.jsonOut)
	}
	if errs := rep.errorCount(); errs > 0 {
		fmt.Fprintf(stderr, "bench: %d measurements failed; see the table and the JSON\n", errs)
		return 1
	}
	return 0
}

// run goes through every round: in each, every run with every receiver
// (the order rotated by the round), then the ping-pong.
func (o *orchestrator) run() *report {
	cfg := o.cfg
	rep := &report{Meta: o.meta()}
	for _, r := range runSpecs(cfg) {
		rep.Runs = append(rep.Runs, runReport{runSpec: r})
	}
	if cfg.pingPong > 0 {
		for _, fam := range cfg.families {
			rep.PingPong = append(rep.PingPong, pingReport{Family: fam, Trips: cfg.pingPong})
		}
	}
	start := time.Now()
	for round := range cfg.rounds {
		for i := range rep.Runs {
			r := &rep.Runs[i]
			for _, recv := range rotate(cfg.receivers, round) {
				m := o.measure(r.runSpec, recv, round)
				r.Measurements = append(r.Measurements, m)
				o.progress(round, r.Name, m)
			}
		}
		for i := range rep.PingPong {
			p := &rep.PingPong[i]
			for _, server := range rotate(pingServers, round) {
				res := o.pingPong(p.Family, server, round)
				p.Measurements = append(p.Measurements, res)
				fmt.Fprintf(o.stderr, "round %d/%d  ping-pong-ipv%d  %-17s p50 %s p99 %s lost %d %s\n",
					round+1, cfg.rounds, p.Family, server, micros(float64(res.P50NS)), micros(float64(res.P99NS)), res.Lost, res.Error)
			}
		}
	}
	rep.Meta.Seconds = time.Since(start).Seconds()
	rep.Meta.LoadEnd = loadAverage()
	return rep
}

// rotate returns s rotated left by n.
func rotate[T any](s []T, n int) []T {
	n %= len(s)
	return append(append([]T(nil), s[n:]...), s[:n]...)
}

func (o *orchestrator) progress(round int, run string, m measurement) {
	msg := fmt.Sprintf("delivered %d/%d, recv %s ns/dg, machine %s ns/dg, stop %s",
		m.Delivered, m.Sent, m.RecvCPUPerDatagram, m.MachineCPUPerDatagram, m.Stop)
	if m.Error != "" {
		msg += "; error: " + m.Error
	}
	fmt.Fprintf(o.stderr, "round %d/%d  %-18s %-17s %s\n", round+1, o.cfg.rounds, run, m.Receiver, msg)
}

// measure runs one receiver on one run's traffic.
func (o *orchestrator) measure(r runSpec, recv string, round int) measurement {
	m := measurement{Receiver: recv, Round: round}
	if err := o.measureInto(&m, r, recv, round); err != nil {
		m.Error = err.Error()
	}
	return m
}

func (o *orchestrator) measureInto(m *measurement, r runSpec, recv string, round int) (err error) {
	cfg := o.cfg
	args := []string{
		"-receiver", recv,
		"-port", strconv.Itoa(cfg.port),
		"-count", strconv.Itoa(cfg.count),
		"-idle", cfg.idle.String(),
		"-max-time", (cfg.timeout + 5*time.Second).String(),
	}
	if cfg.profileDir != "" {
		file := fmt.Sprintf("%s-%s-r%d.prof", r.Name, strings.ReplaceAll(recv, "/", "-"), round+1)
		args = append(args, "-cpuprofile", filepath.Join(cfg.profileDir, file))
	}
	rc, err := startReady(roleReceiver, o.verbose, args...)
	if err != nil {
		return err
	}
	defer rc.finishInto(&err)

	if r.Flood {
		// Assigned, not declared: the deferred finish reports into
		// measureInto's own error.
		var fc *child
		fc, err = startReady(roleFlood, o.verbose,
			"-family", strconv.Itoa(r.Family),
			"-udp-port", strconv.Itoa(cfg.port+1),
			"-tcp-port", strconv.Itoa(cfg.port+2),
			"-max-time", (cfg.timeout + 15*time.Second).String())
		if err != nil {
			return err
		}
		defer fc.finishInto(&err)
		time.Sleep(100 * time.Millisecond) // let the flood reach full rate
	}

	dst := netip.AddrPortFrom(loopback(r.Family), uint16(cfg.port))
	var b datagramSender
	if r.Sources > 0 {
		b, err = newManySources(dst, r.Size, r.Sources, r.FragPct)
	} else {
		b, err = newBlaster(r.Family, dst, r.Size)
	}
	if err != nil {
		return err
	}
	defer b.close()
	start := o.busy.mark()
	sres, sendErr := blast(b, o.clock, cfg.count, time.Now().Add(cfg.timeout))
	// A receiver that has seen the count may have exited already, and
	// its standard input with it: its result is what counts.
	_ = rc.say("done")
	var res recvResult
	if err := rc.next(cfg.idle+cfg.timeout, &res); err != nil {
		return err
	}
	end := o.busy.after(max(res.LastNS, sres.EndNS))

	m.Sent, m.Delivered, m.Other, m.Stop = uint64(sres.Sent), res.Delivered, res.Other, res.Stop
	if m.Delivered <= m.Sent {
		m.Lost = m.Sent - m.Delivered
	}
	m.RecvUserNS, m.RecvSystemNS = res.UserNS, res.SystemNS
	m.RecvSwitches = res.VoluntarySwitches + res.InvoluntarySwitches
	m.SpanNS = res.LastNS - res.FirstNS
	m.Rate = ratio(float64(m.Delivered), float64(m.SpanNS)/1e9)
	m.MachineBusyNS = int64(end.busy - start.busy)
	m.WindowNS = end.at - start.at
	m.SendCPUNS, m.SendProcessNS, m.SendRate = sres.CPUNS, sres.ProcessCPUNS, figure(sres.Rate)
	m.RecvCPUPerDatagram = ratio(float64(m.RecvUserNS+m.RecvSystemNS), float64(m.Delivered))
	m.MachineCPUPerDatagram = ratio(float64(m.MachineBusyNS), float64(m.Delivered))
	m.Extra = res.Extra

	var errs []error
	if sendErr != nil {
		errs = append(errs, fmt.Errorf("sender: %w", sendErr))
	}
	if res.Error != "" {
		errs = append(errs, fmt.Errorf("receiver: %s", res.Error))
	}
	if m.Delivered > m.Sent {
		errs = append(errs, fmt.Errorf("delivered %d datagrams of %d sent: duplicates", m.Delivered, m.Sent))
	}
	return errors.Join(errs...)
}

// meta describes the machine and the run.
type meta struct {
	Started    time.Time `json:"started"`
	Seconds    float64   `json:"seconds"`
	GoVersion  string    `json:"go_version"`
	Kernel     string    `json:"kernel"`
	CPUs       int       `json:"cpus"`
	Namespace  string    `json:"namespace"`
	LoadStart  string    `json:"load_start"` // /proc/loadavg
	LoadEnd    string    `json:"load_end"`
	Args       []string  `json:"args"`
	Quick      bool      `json:"quick"`
	Count      int       `json:"count"`
	Rounds     int       `json:"rounds"`
	PingPong   int       `json:"ping_pong_trips"`
	Idle       string    `json:"idle_timeout"`
	Receivers  []string  `json:"receivers"`
	Baseline   string    `json:"baseline"`
	Notes      []string  `json:"notes,omitempty"`
	Aggregates string    `json:"aggregates"`
}

func (o *orchestrator) meta() meta {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	return meta{
		Started:    time.Now().UTC(),
		GoVersion:  runtime.Version(),
		Kernel:     unix.ByteSliceToString(uts.Release[:]),
		CPUs:       runtime.NumCPU(),
		Namespace:  os.Getenv("UDPSTREAM_BENCH_NAMESPACE"),
		LoadStart:  loadAverage(),
		Args:       o.cfg.args,
		Quick:      o.cfg.quick,
		Count:      o.cfg.count,
		Rounds:     o.cfg.rounds,
		PingPong:   o.cfg.pingPong,
		Idle:       o.cfg.idle.String(),
		Receivers:  o.cfg.receivers,
		Baseline:   recvUDPConn,
		Aggregates: "figures are medians over rounds; ratios are medians of per-round ratios to the baseline's figure in the same run and round",
	}
}

// loadAverage returns the first three fields of /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}
