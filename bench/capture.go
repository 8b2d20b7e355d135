//go:build linux

package main

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// The capture comparison's receivers: the udpstream command writing its
// two kinds of file, and tcpdump writing its own, each a process of its
// own started as a user would start it.
const (
	capCmdJSON   = "cmd-json"   // udpstream -port P -json > FILE
	capCmdPcapng = "cmd-pcapng" // udpstream -port P -w FILE > /dev/null
	capTcpdump   = "tcpdump"    // tcpdump -i IFACE -w FILE udp dst port P
)

var captureNames = []string{capCmdJSON, capCmdPcapng, capTcpdump}

// envCommand carries the path of the udpstream command that
// enterNamespace built for the capture comparison.
const envCommand = "UDPSTREAM_BENCH_COMMAND"

// buildCommand builds the udpstream command of this checkout (the bench
// module replaces the library by ../) into dir and returns its path.
func buildCommand(dir string) (string, error) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("building the udpstream command: %w", err)
	}
	bin := filepath.Join(dir, "udpstream")
	out, err := exec.Command(goCmd, "build", "-o", bin, "github.com/udpstream/udpstream/cmd/udpstream").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build of the udpstream command (run the bench in its directory): %v: %s", err, strings.TrimSpace(string(out)))
	}
	return bin, nil
}

// captureReport is the capture comparison: every run with every capture,
// and the verdicts.
type captureReport struct {
	Command   string           `json:"command"` // how each was started
	Tcpdump   string           `json:"tcpdump_version"`
	Link      string           `json:"link"`
	Quiet     string           `json:"quiet"`
	Runs      []captureRun     `json:"runs"`
	Verdicts  []captureVerdict `json:"verdicts"`
	Baseline  string           `json:"baseline"`
	Judgement string           `json:"judgement"`
	Error     string           `json:"error,omitempty"` // the comparison could not run
}

// captureRun is one kind of traffic with every capture over the rounds.
type captureRun struct {
	runSpec
	Summary      []captureSummary     `json:"summary"`
	Measurements []captureMeasurement `json:"measurements"`
}

// captureMeasurement is one capture of one burst.
type captureMeasurement struct {
	Receiver string `json:"receiver"`
	Round    int    `json:"round"`
	Sent     uint64 `json:"sent"`
	SendRate figure `json:"send_rate"` // datagrams per second the sender sent the burst at
	fileCount
	FileBytes int64 `json:"file_bytes"`
	// From the end of the burst until the file and the process's CPU
	// time had stopped growing, the quiet period excluded.
	SettleNS int64 `json:"settle_ns"`
	// The capture process's CPU time, user and system, over its life.
	CPUNS int64 `json:"cpu_ns"`
	// The process's own account on stderr after it was stopped: the
	// udpstream summary, tcpdump's captured / received / dropped.
	Said  []string `json:"said,omitempty"`
	Error string   `json:"error,omitempty"`
}

// captureSummary is one capture's figures in one run.
type captureSummary struct {
	Receiver string   `json:"receiver"`
	Kept     []uint64 `json:"kept_per_round"` // in round order; failed rounds left out
	Median   figure   `json:"kept_median"`
	// Kept over tcpdump's kept in the same round, per round and the
	// median of those.
	Ratios      []figure `json:"ratio_to_tcpdump_per_round"`
	RatioMedian figure   `json:"ratio_to_tcpdump_median"`
	CPUPerKept  figure   `json:"cpu_ns_per_kept_median"` // the process's whole CPU time over what it kept
	Errors      []string `json:"errors,omitempty"`
}

// captureVerdict judges one output kind of the command against tcpdump in
// one run: it passes when in every round it kept at least as many
// datagrams as tcpdump.
type captureVerdict struct {
	Target   string `json:"target"`
	Run      string `json:"run"`
	Receiver string `json:"receiver"`
	Worst    figure `json:"lowest_ratio"` // the lowest per-round ratio to tcpdump
	Rounds   int    `json:"rounds"`       // rounds with both measurements
	Pass     bool   `json:"pass"`
}

const targetCapture = "command keeps at least as many as tcpdump -w"

// runCapture is the orchestrator's -capture mode: per round, every run,
// with every capture in an order rotated by the round.
func (o *orchestrator) runCapture() *report {
	cfg := o.cfg
	rep := &report{Meta: o.meta()}
	rep.Meta.Baseline = capTcpdump
	rep.Meta.Aggregates = "kept is per round and the median over rounds; ratios are to tcpdump's kept in the same run and round"
	cr := &captureReport{
		Command: fmt.Sprintf("%s: udpstream -port P -json > FILE; %s: udpstream -port P -w FILE > /dev/null; %s: tcpdump -i %s -w FILE udp dst port P (no -U)",
			capCmdJSON, capCmdPcapng, capTcpdump, vethNear),
		Tcpdump:   tcpdumpVersion(),
		Link:      fmt.Sprintf("veth %s (bench namespace, receiving) <-> %s (a namespace of the sender's)", vethNear, vethFar),
		Quiet:     cfg.quiet.String(),
		Baseline:  capTcpdump,
		Judgement: "pass when the command kept at least as many datagrams as tcpdump in every round",
	}
	rep.Capture = cr
	for _, size := range cfg.sizes {
		for _, fam := range cfg.families {
			name := fmt.Sprintf("%dB-ipv%d-veth", size, fam)
			cr.Runs = append(cr.Runs, captureRun{runSpec: runSpec{Name: name, Size: size, Family: fam}})
		}
	}
	start := time.Now()
	defer func() {
		rep.Meta.Seconds = time.Since(start).Seconds()
		rep.Meta.LoadEnd = loadAverage()
	}()
	fail := func(err error) *report {
		cr.Error = err.Error()
		return rep
	}
	bin := os.Getenv(envCommand)
	if bin == "" {
		return fail(fmt.Errorf("started without %s: run the bench command itself", envCommand))
	}
	v, err := setupVeth()
	if err != nil {
		return fail(err)
	}
	defer v.close()
	dir, err := os.MkdirTemp("", "udpstream-bench-capture-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(dir)

	for round := range cfg.rounds {
		for i := range cr.Runs {
			r := &cr.Runs[i]
			for _, recv := range rotate(cfg.receivers, round) {
				m := o.capture(v, bin, dir, r.runSpec, recv, round)
				r.Measurements = append(r.Measurements, m)
				msg := fmt.Sprintf("kept %d/%d, settled %s after the burst", m.Kept, m.Sent, time.Duration(m.SettleNS).Round(time.Millisecond))
				if m.Error != "" {
					msg += "; error: " + m.Error
				}
				fmt.Fprintf(o.stderr, "round %d/%d  %-18s %-17s %s\n", round+1, cfg.rounds, r.Name, recv, msg)
			}
		}
	}
	return rep
}

// capture runs one capture of one burst.
func (o *orchestrator) capture(v *vethLink, bin, dir string, r runSpec, recv string, round int) captureMeasurement {
	m := captureMeasurement{Receiver: recv, Round: round}
	if err := o.captureInto(&m, v, bin, dir, r, recv, round); err != nil {
		m.Error = err.Error()
	}
	return m
}

func (o *orchestrator) captureInto(m *captureMeasurement, v *vethLink, bin, dir string, r runSpec, recv string, round int) (err error) {
	cfg := o.cfg
	port := strconv.Itoa(cfg.port)
	file := filepath.Join(dir, fmt.Sprintf("%s-%s-r%d", r.Name, recv, round+1))
	defer os.Remove(file)

	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer devNull.Close()
	var cmd *exec.Cmd
	var ready string // the line on stderr that says it listens
	switch recv {
	case capCmdJSON:
		f, err := os.Create(file)
		if err != nil {
			return err
		}
		defer f.Close()
		cmd = exec.Command(bin, "-port", port, "-json")
		cmd.Stdout = f
		ready = "udpstream: listening on port " + port
	case capCmdPcapng:
		// The lines go on being formatted, as they are for a user who
		// writes a file and watches the terminal or discards them.
		cmd = exec.Command(bin, "-port", port, "-w", file)
		cmd.Stdout = devNull
		ready = "udpstream: listening on port " + port
	case capTcpdump:
		// Without -U: tcpdump's default buffering is what users run, and
		// the bar the issue set. The port is held as the command holds
		// it, so that the kernel sends no ICMP port unreachable back
		// across the link for tcpdump's bursts alone.
		hold, err := reservePort(cfg.port)
		if err != nil {
			return err
		}
		defer hold.Close()
		cmd = exec.Command("tcpdump", "-i", vethNear, "-w", file, "udp dst port "+port)
		cmd.Stdout = devNull
		ready = "listening on " + vethNear
	default:
		return fmt.Errorf("unknown capture %q", recv)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p, err := startCapture(cmd, ready, o.verbose)
	if err != nil {
		return err
	}
	defer func() {
		said, serr := p.stop(10 * time.Second)
		m.Said = said
		if ps := p.cmd.ProcessState; ps != nil {
			m.CPUNS = int64(ps.UserTime() + ps.SystemTime())
		}
		if err == nil && serr != nil {
			err = serr
		}
		if err != nil {
			return
		}
		if fi, serr := os.Stat(file); serr == nil {
			m.FileBytes = fi.Size()
		}
		if recv == capCmdJSON {
			m.fileCount, err = countJSONLines(file, cfg.port)
		} else {
			m.fileCount, err = countCaptureFile(file, cfg.port)
		}
		if err == nil && m.Kept > m.Sent {
			err = fmt.Errorf("kept %d datagrams of %d sent: duplicates", m.Kept, m.Sent)
		}
	}()

	near, far := v.addrs(r.Family)
	var b *blaster
	if err := v.inFar(func() (err error) {
		b, err = newBlasterFrom(far, netip.AddrPortFrom(near, uint16(cfg.port)), r.Size)
		return err
	}); err != nil {
		return err
	}
	defer b.close()
	sres, sendErr := blast(b, o.clock, cfg.count, time.Now().Add(cfg.timeout))
	m.Sent, m.SendRate = uint64(sres.Sent), figure(sres.Rate)
	if sendErr != nil {
		return fmt.Errorf("sender: %w", sendErr)
	}
	settled, err := p.awaitQuiet(file, cfg.quiet, cfg.timeout)
	m.SettleNS = int64(settled)
	return err
}

// captureProcess is a capture tool at work.
type captureProcess struct {
	cmd    *exec.Cmd
	name   string
	said   chan string // its standard error, line by line
	exited chan error
	lines  []string // what it said after it was ready
}

// startCapture starts cmd and waits until it says ready on its standard
// error.
func startCapture(cmd *exec.Cmd, ready string, passthrough io.Writer) (*captureProcess, error) {
	p := &captureProcess{cmd: cmd, name: filepath.Base(cmd.Path), said: make(chan string, 64), exited: make(chan error, 1)}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", p.name, err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if passthrough != nil {
				fmt.Fprintf(passthrough, "%s: %s\n", p.name, sc.Text())
			}
			p.said <- sc.Text()
		}
		close(p.said)
		// Wait only once the pipe is drained: it closes the pipe.
		p.exited <- cmd.Wait()
	}()
	t := time.NewTimer(childReadyTimeout)
	defer t.Stop()
	var before []string
	for {
		select {
		case line, ok := <-p.said:
			if !ok {
				err := <-p.exited
				return nil, fmt.Errorf("%s ended before it was ready (%v): %s", p.name, err, strings.Join(before, "; "))
			}
			if strings.HasPrefix(line, ready) || strings.Contains(line, ": "+ready) {
				return p, nil
			}
			before = append(before, line)
		case <-t.C:
			_, _ = p.stop(time.Second)
			return nil, fmt.Errorf("%s did not say %q within %v: %s", p.name, ready, childReadyTimeout, strings.Join(before, "; "))
		}
	}
}

// awaitQuiet waits until neither the size of file nor the process's CPU
// time has grown for quiet, or timeout passes, and returns how long after
// the call they last grew.
func (p *captureProcess) awaitQuiet(file string, quiet, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	sample := func() (int64, int64) {
		var size int64
		if fi, err := os.Stat(file); err == nil {
			size = fi.Size()
		}
		return size, processTicks(p.cmd.Process.Pid)
	}
	size, cpu := sample()
	changed := start
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for now := range tick.C {
		p.drain()
		s, c := sample()
		if s != size || c != cpu {
			size, cpu, changed = s, c, now
		}
		switch {
		case now.Sub(changed) >= quiet:
			return changed.Sub(start), nil
		case now.After(deadline):
			return changed.Sub(start), fmt.Errorf("%s's file and CPU time still grew %v after the burst", p.name, timeout)
		}
	}
	panic("unreachable")
}

// drain keeps what the process has said, without waiting.
func (p *captureProcess) drain() {
	for {
		select {
		case line, ok := <-p.said:
			if !ok {
				return
			}
			p.lines = append(p.lines, line)
		default:
			return
		}
	}
}

// stop sends SIGINT, as a user's Ctrl-C, and waits for the process to
// exit, killing it after timeout. It returns what the process said after
// it was ready.
func (p *captureProcess) stop(timeout time.Duration) ([]string, error) {
	_ = p.cmd.Process.Signal(os.Interrupt)
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case line, ok := <-p.said:
			if ok {
				p.lines = append(p.lines, line)
				continue
			}
			err := <-p.exited
			if err != nil {
				err = fmt.Errorf("%s: %w: %s", p.name, err, strings.Join(p.lines, "; "))
			}
			return p.lines, err
		case <-t.C:
			_ = p.cmd.Process.Kill()
			for range p.said {
			}
			<-p.exited
			return p.lines, fmt.Errorf("%s did not exit within %v of SIGINT; killed", p.name, timeout)
		}
	}
}

// processTicks returns the user and system CPU time of process pid, in
// clock ticks, -1 if it cannot be read.
func processTicks(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return -1
	}
	// The command name, in parentheses, may hold spaces: the fields
	// counted start after its closing one, with the state (field 3).
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return -1
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return -1
	}
	return utime + stime
}

// tcpdumpVersion returns the first line tcpdump --version prints.
func tcpdumpVersion() string {
	out, err := exec.Command("tcpdump", "--version").CombinedOutput()
	if err != nil {
		return "unknown: " + err.Error()
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

// summarize fills the summaries and the verdicts.
func (cr *captureReport) summarize(receivers []string) {
	cr.Verdicts = nil
	for i := range cr.Runs {
		r := &cr.Runs[i]
		base := map[int]uint64{} // tcpdump's kept by round
		for _, m := range r.Measurements {
			if m.Receiver == capTcpdump && m.Error == "" {
				base[m.Round] = m.Kept
			}
		}
		r.Summary = nil
		for _, recv := range receivers {
			s := captureSummary{Receiver: recv}
			var kept, cpus []figure
			worst, rounds := missing, 0
			for _, m := range r.Measurements {
				if m.Receiver != recv {
					continue
				}
				if m.Error != "" {
					s.Errors = append(s.Errors, fmt.Sprintf("round %d: %s", m.Round+1, m.Error))
					continue
				}
				s.Kept = append(s.Kept, m.Kept)
				kept = append(kept, figure(m.Kept))
				cpus = append(cpus, ratio(float64(m.CPUNS), float64(m.Kept)))
				x := missing
				if b, ok := base[m.Round]; ok {
					x = ratio(float64(m.Kept), float64(b))
					if b == 0 && m.Kept == 0 {
						x = 1 // as many as a tcpdump that kept nothing
					}
					rounds++
					if x.ok() && (!worst.ok() || x < worst) {
						worst = x
					}
				}
				s.Ratios = append(s.Ratios, x)
			}
			s.Median, s.RatioMedian, s.CPUPerKept = median(kept), median(s.Ratios), median(cpus)
			r.Summary = append(r.Summary, s)
			if recv != capTcpdump {
				cr.Verdicts = append(cr.Verdicts, captureVerdict{
					Target: targetCapture, Run: r.Name, Receiver: recv, Worst: worst, Rounds: rounds,
					Pass: rounds > 0 && len(s.Errors) == 0 && worst.ok() && worst >= 1,
				})
			}
		}
	}
}

// errorCount counts the captures that failed.
func (cr *captureReport) errorCount() int {
	n := 0
	if cr.Error != "" {
		n++
	}
	for _, r := range cr.Runs {
		for _, m := range r.Measurements {
			if m.Error != "" {
				n++
			}
		}
	}
	return n
}

// print writes the capture tables and verdicts.
func (cr *captureReport) print(w io.Writer) {
	if cr.Error != "" {
		fmt.Fprintf(w, "\ncapture comparison failed: %s\n", cr.Error)
		return
	}
	fmt.Fprintf(w, "\ncapture comparison over %s; %s\n", cr.Link, cr.Tcpdump)
	fmt.Fprintf(w, "%s\n", cr.Command)
	fmt.Fprintf(w, "each capture is stopped with SIGINT once its file and CPU time have not grown for %s\n", cr.Quiet)
	for _, r := range cr.Runs {
		fmt.Fprintf(w, "\n== capture: %d B payload, IPv%d, over veth ==\n", r.Size, r.Family)
		rounds := 0
		for _, s := range r.Summary {
			rounds = max(rounds, len(s.Kept)+len(s.Errors))
		}
		head := "capture\t"
		for i := range rounds {
			head += fmt.Sprintf("round %d\tx\t", i+1)
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, head+"median\tx (median)\tCPU ns/kept\t")
		for _, s := range r.Summary {
			line := s.Receiver + "\t"
			for i := range rounds {
				if i < len(s.Kept) {
					line += fmt.Sprintf("%d\t%s\t", s.Kept[i], s.Ratios[i])
				} else {
					line += "failed\t\t"
				}
			}
			fmt.Fprintln(tw, line+fmt.Sprintf("%s\t%s\t%s\t", s.Median, s.RatioMedian, s.CPUPerKept))
		}
		tw.Flush()
		sent := uint64(0)
		var rates []figure
		for _, m := range r.Measurements {
			sent = max(sent, m.Sent)
			rates = append(rates, m.SendRate)
		}
		fmt.Fprintf(w, "(kept of %d sent per round at a median %s datagrams/s; x is the ratio to tcpdump's kept in the same round; CPU is the capture process's, start to exit)\n", sent, rateString(median(rates)))
		for _, s := range r.Summary {
			if len(s.Errors) > 0 {
				fmt.Fprintf(w, "  %s: %s\n", s.Receiver, strings.Join(s.Errors, "; "))
			}
		}
	}
	if len(cr.Verdicts) > 0 {
		fmt.Fprintf(w, "\n== capture targets (%s) ==\n", cr.Judgement)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, v := range cr.Verdicts {
			verdict := "FAIL"
			if v.Pass {
				verdict = "PASS"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\tlowest ratio %s over %d rounds\n", verdict, targetCapture+" ("+outputKind(v.Receiver)+")", v.Run, v.Receiver, v.Worst, v.Rounds)
		}
		tw.Flush()
	}
}

// outputKind names the command's output a capture writes.
func outputKind(recv string) string {
	switch recv {
	case capCmdJSON:
		return "-json"
	case capCmdPcapng:
		return "-w"
	}
	return recv
}
