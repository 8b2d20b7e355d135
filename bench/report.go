//go:build linux

package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// figure is a measured number that may be missing (NaN: no datagram, no
// baseline), written to JSON as null.
type figure float64

var missing = figure(math.NaN())

func (f figure) ok() bool { return !math.IsNaN(float64(f)) && !math.IsInf(float64(f), 0) }

func (f figure) MarshalJSON() ([]byte, error) {
	if !f.ok() {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, float64(f), 'f', 3, 64), nil
}

func (f *figure) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*f = missing
		return nil
	}
	v, err := strconv.ParseFloat(string(b), 64)
	*f = figure(v)
	return err
}

// String formats f for the table: three significant digits or so.
func (f figure) String() string {
	v := float64(f)
	switch {
	case !f.ok():
		return "n/a"
	case math.Abs(v) >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// ratio returns a/b, missing when either is missing or b is zero.
func ratio(a, b float64) figure {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return missing
	}
	return figure(a / b)
}

// median returns the median of the figures present, missing if none is.
func median(fs []figure) figure {
	var v []float64
	for _, f := range fs {
		if f.ok() {
			v = append(v, float64(f))
		}
	}
	if len(v) == 0 {
		return missing
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return figure(v[len(v)/2])
	}
	return figure((v[len(v)/2-1] + v[len(v)/2]) / 2)
}

// report is everything a run of the bench found; it is the JSON output.
type report struct {
	Meta     meta         `json:"meta"`
	Runs     []runReport  `json:"runs"`
	PingPong []pingReport `json:"ping_pong"`
	Targets  []targetLine `json:"targets"`
	// The capture comparison, with -capture (which runs nothing else).
	Capture *captureReport `json:"capture,omitempty"`
}

// runReport is one run: every receiver's measurements over the rounds and
// their summary.
type runReport struct {
	runSpec
	Summary      []summary     `json:"summary"`
	Measurements []measurement `json:"measurements"`
}

// summary is one receiver's figures in one run, over the rounds.
type summary struct {
	Receiver string `json:"receiver"`
	Rounds   int    `json:"rounds"` // rounds with a result

	Sent      uint64 `json:"sent"`
	Delivered uint64 `json:"delivered"`
	Lost      uint64 `json:"lost"`
	LossPct   figure `json:"loss_pct"`

	Rate         figure `json:"rate"`
	RateRatio    figure `json:"rate_ratio"`
	RecvCPU      figure `json:"recv_cpu_ns_per_datagram"`
	RecvCPURatio figure `json:"recv_cpu_ratio"`
	// Receiver CPU per datagram against each floor run, by its name.
	FloorRatios         map[string]figure `json:"recv_cpu_ratio_to_floors,omitempty"`
	Switches            figure            `json:"recv_switches_per_datagram"` // context switches of the receiver process
	MachineCPU          figure            `json:"machine_cpu_ns_per_datagram"`
	MachineCPURatio     figure            `json:"machine_cpu_ratio"`
	SendCPU             figure            `json:"send_cpu_ns_per_datagram"`      // the sending thread, per delivered datagram
	SendRecvCPU         figure            `json:"send_recv_cpu_ns_per_datagram"` // the sending thread and the receiver process
	SendRecvCPURatio    figure            `json:"send_recv_cpu_ratio"`
	KernelDrops         uint64            `json:"kernel_drops,omitempty"`
	OtherFramesPerRound figure            `json:"other_frames_per_round"`
	Errors              []string          `json:"errors,omitempty"`
}

// targetLine is one of the project's targets, judged in one run.
type targetLine struct {
	Target string `json:"target"`
	Run    string `json:"run"`
	Value  figure `json:"value"`
	Limit  figure `json:"limit"`
	Pass   bool   `json:"pass"`
}

// byRound indexes a run's good measurements by round and receiver.
func (r *runReport) byRound() map[int]map[string]*measurement {
	return indexByRound(r.Measurements, func(m *measurement) (int, string, bool) {
		return m.Round, m.Receiver, m.Error == "" && m.Delivered > 0
	})
}

// indexByRound indexes the items that key calls good by their round and
// name.
func indexByRound[T any](items []T, key func(*T) (round int, name string, good bool)) map[int]map[string]*T {
	out := map[int]map[string]*T{}
	for i := range items {
		round, name, good := key(&items[i])
		if !good {
			continue
		}
		if out[round] == nil {
			out[round] = map[string]*T{}
		}
		out[round][name] = &items[i]
	}
	return out
}

// pairedRatio returns the median over rounds of f(a)/f(b), a and b being
// the measurements of two receivers in the same round (of the runs ra and
// rb, which may be the same run).
func pairedRatio(ra, rb *runReport, a, b string, f func(*measurement) figure) figure {
	ia, ib := ra.byRound(), rb.byRound()
	var rs []figure
	for round, ms := range ia {
		ma, mb := ms[a], ib[round][b]
		if ma != nil && mb != nil {
			rs = append(rs, ratio(float64(f(ma)), float64(f(mb))))
		}
	}
	return median(rs)
}

func recvCPU(m *measurement) figure { return m.RecvCPUPerDatagram }
func sendRecvCPU(m *measurement) figure {
	return ratio(float64(m.SendCPUNS+m.RecvUserNS+m.RecvSystemNS), float64(m.Delivered))
}
func machineCPU(m *measurement) figure { return m.MachineCPUPerDatagram }
func rate(m *measurement) figure       { return m.Rate }

// evaluate fills the summaries and judges the targets.
func (rep *report) evaluate() {
	for i := range rep.Runs {
		r := &rep.Runs[i]
		r.Summary = nil
		for _, recv := range rep.Meta.Receivers {
			r.Summary = append(r.Summary, r.summarize(recv, rep.Meta.Receivers))
		}
	}
	for i := range rep.PingPong {
		rep.PingPong[i].summarize()
	}
	rep.Targets = rep.judge()
	if rep.Capture != nil {
		rep.Capture.summarize(rep.Meta.Receivers)
	}
}

// summarize sums up one receiver's measurements; present are the
// receivers of the run, of which the floors are judged against.
func (r *runReport) summarize(recv string, present []string) summary {
	s := summary{Receiver: recv}
	var rates, recvs, machines, sends, sendRecvs, others, switches []figure
	for i := range r.Measurements {
		m := &r.Measurements[i]
		if m.Receiver != recv {
			continue
		}
		if m.Error != "" {
			s.Errors = append(s.Errors, fmt.Sprintf("round %d: %s", m.Round+1, m.Error))
			continue
		}
		s.Rounds++
		s.Sent += m.Sent
		s.Delivered += m.Delivered
		s.Lost += m.Lost
		s.KernelDrops += m.Extra["kernel_drops"]
		rates = append(rates, m.Rate)
		recvs = append(recvs, m.RecvCPUPerDatagram)
		machines = append(machines, m.MachineCPUPerDatagram)
		sends = append(sends, ratio(float64(m.SendCPUNS), float64(m.Delivered)))
		sendRecvs = append(sendRecvs, sendRecvCPU(m))
		switches = append(switches, ratio(float64(m.RecvSwitches), float64(m.Delivered)))
		others = append(others, figure(m.Other))
	}
	s.LossPct = ratio(100*float64(s.Lost), float64(s.Sent))
	s.Rate, s.RecvCPU, s.MachineCPU, s.SendCPU = median(rates), median(recvs), median(machines), median(sends)
	s.OtherFramesPerRound, s.SendRecvCPU, s.Switches = median(others), median(sendRecvs), median(switches)
	s.SendRecvCPURatio = pairedRatio(r, r, recv, recvUDPConn, sendRecvCPU)
	s.RateRatio = pairedRatio(r, r, recv, recvUDPConn, rate)
	s.RecvCPURatio = pairedRatio(r, r, recv, recvUDPConn, recvCPU)
	s.MachineCPURatio = pairedRatio(r, r, recv, recvUDPConn, machineCPU)
	for _, f := range floors {
		if slices.Contains(present, f) {
			if s.FloorRatios == nil {
				s.FloorRatios = map[string]figure{}
			}
			s.FloorRatios[f] = pairedRatio(r, r, recv, f, recvCPU)
		}
	}
	return s
}

func (r *runReport) summaryOf(recv string) *summary {
	for i := range r.Summary {
		if r.Summary[i].Receiver == recv {
			return &r.Summary[i]
		}
	}
	return nil
}

// twin returns the run that is r but for what with changes: r's quiet
// twin, say, or its one-source twin.
func (rep *report) twin(r *runReport, with func(*runSpec)) *runReport {
	want := r.runSpec
	with(&want)
	for i := range rep.Runs {
		q := &rep.Runs[i]
		if got := q.runSpec; got.Size == want.Size && got.Family == want.Family && got.Flood == want.Flood &&
			got.Sources == want.Sources && got.FragPct == want.FragPct {
			return q
		}
	}
	return nil
}

// The project's targets for udpstream, each a ratio in the same round.
const (
	targetRecvVsUDP        = "udpstream receiver CPU/datagram <= 0.1x net.UDPConn"
	targetRecvVsAF         = "udpstream receiver CPU/datagram <= gopacket-afpacket"
	targetFloodVsQuiet     = "udpstream receiver CPU/datagram under flood <= 1.5x quiet"
	targetMachineVsUDP     = "total machine CPU/datagram <= 0.65x net.UDPConn (quiet)"
	targetZeroLoss         = "udpstream zero loss at full rate, default options (quiet)"
	targetPingP50          = "ping-pong p50 round trip <= 1.1x net.UDPConn"
	targetPingP99          = "ping-pong p99 round trip <= 1.1x net.UDPConn"
	targetRecvVsChanFloor  = "udpstream receiver CPU/datagram <= 1.25x ring+chan-floor"
	targetPingChanP50      = "ping-pong p50 round trip <= 1.1x net.UDPConn+chan"
	targetPingChanP99      = "ping-pong p99 round trip <= 1.1x net.UDPConn+chan"
	limitRecvVsChanFloor   = 1.25
	targetManySources      = "udpstream receiver CPU/datagram, many sources <= 1.2x one source"
	limitManySources       = 1.2
	limitRecvVsUDP         = 0.1
	limitFloodVsQuiet      = 1.5
	limitMachineVsUDP      = 0.65
	limitPingVsUDP         = 1.1
	limitRecvVsAFPacket    = 1.0
	limitZeroLossDatagrams = 0
)

func (rep *report) judge() []targetLine {
	has := func(r string) bool { return slices.Contains(rep.Meta.Receivers, r) }
	if !has(recvUDPStream) {
		return nil
	}
	var out []targetLine
	add := func(target, run string, v figure, limit float64) {
		out = append(out, targetLine{Target: target, Run: run, Value: v, Limit: figure(limit), Pass: v.ok() && float64(v) <= limit})
	}
	for i := range rep.Runs {
		r := &rep.Runs[i]
		if has(recvUDPConn) {
			add(targetRecvVsUDP, r.Name, r.summaryOf(recvUDPStream).RecvCPURatio, limitRecvVsUDP)
		}
		if has(recvAFPacket) {
			add(targetRecvVsAF, r.Name, pairedRatio(r, r, recvUDPStream, recvAFPacket, recvCPU), limitRecvVsAFPacket)
		}
		if has(recvRingChanFloor) {
			add(targetRecvVsChanFloor, r.Name, pairedRatio(r, r, recvUDPStream, recvRingChanFloor, recvCPU), limitRecvVsChanFloor)
		}
		if r.Sources > 1 {
			if one := rep.twin(r, func(s *runSpec) { s.Sources = 1 }); one != nil {
				add(targetManySources, r.Name, pairedRatio(r, one, recvUDPStream, recvUDPStream, recvCPU), limitManySources)
			}
		}
		if r.Flood {
			if q := rep.twin(r, func(s *runSpec) { s.Flood = false }); q != nil {
				add(targetFloodVsQuiet, r.Name, pairedRatio(r, q, recvUDPStream, recvUDPStream, recvCPU), limitFloodVsQuiet)
			}
			continue
		}
		if has(recvUDPConn) {
			add(targetMachineVsUDP, r.Name, r.summaryOf(recvUDPStream).MachineCPURatio, limitMachineVsUDP)
		}
		s := r.summaryOf(recvUDPStream)
		lost := missing
		if s.Rounds > 0 && len(s.Errors) == 0 {
			lost = figure(s.Lost)
		}
		add(targetZeroLoss, r.Name, lost, limitZeroLossDatagrams)
	}
	for i := range rep.PingPong {
		p := &rep.PingPong[i]
		s := p.summaryOf(recvUDPStream)
		if s == nil {
			continue
		}
		name := fmt.Sprintf("ping-pong-ipv%d", p.Family)
		add(targetPingP50, name, s.P50Ratio, limitPingVsUDP)
		add(targetPingP99, name, s.P99Ratio, limitPingVsUDP)
		add(targetPingChanP50, name, s.P50ChanRatio, limitPingVsUDP)
		add(targetPingChanP99, name, s.P99ChanRatio, limitPingVsUDP)
	}
	return out
}

// errorCount counts the measurements that failed.
func (rep *report) errorCount() int {
	n := 0
	for _, r := range rep.Runs {
		for _, m := range r.Measurements {
			if m.Error != "" {
				n++
			}
		}
	}
	for _, p := range rep.PingPong {
		for _, m := range p.Measurements {
			if m.Error != "" {
				n++
			}
		}
	}
	if rep.Capture != nil {
		n += rep.Capture.errorCount()
	}
	return n
}

// printReport writes the tables and the targets.
func printReport(w io.Writer, rep *report) {
	m := rep.Meta
	fmt.Fprintf(w, "udpstream bench: %s, %s, %d CPUs, in a new %s\n", m.GoVersion, m.Kernel, m.CPUs, m.Namespace)
	fmt.Fprintf(w, "load average %s at the start, %s at the end; %.0f s\n", m.LoadStart, m.LoadEnd, m.Seconds)
	fmt.Fprintf(w, "%d datagrams per receiver, run and round; %d rounds; ratios are to %s in the same round (median over rounds)\n",
		m.Count, m.Rounds, m.Baseline)
	if rep.Capture != nil {
		rep.Capture.print(w)
	}
	for _, r := range rep.Runs {
		fmt.Fprintf(w, "\n== %s ==\n", r.title())
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		var present []string
		for _, f := range floors {
			if slices.Contains(m.Receivers, f) {
				present = append(present, f)
			}
		}
		head := "receiver\tdgram/s\tx\tlost\tloss %\trecv ns/dgram\tx\t"
		for _, f := range present {
			head += "x " + f + "\t"
		}
		fmt.Fprintln(tw, head+"csw/dgram\tsend+recv ns/dgram\tx\tmachine ns/dgram\tx\t")
		for _, s := range r.Summary {
			if s.Rounds == 0 {
				fmt.Fprintf(tw, "%s\tfailed\t\n", s.Receiver)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t",
				s.Receiver, rateString(s.Rate), s.RateRatio, s.Lost, s.LossPct, s.RecvCPU, s.RecvCPURatio)
			for _, f := range present {
				fmt.Fprintf(tw, "%s\t", s.FloorRatios[f])
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n",
				s.Switches, s.SendRecvCPU, s.SendRecvCPURatio, s.MachineCPU, s.MachineCPURatio)
		}
		tw.Flush()
		for _, s := range r.Summary {
			if len(s.Errors) > 0 {
				fmt.Fprintf(w, "  %s: %s\n", s.Receiver, strings.Join(s.Errors, "; "))
			}
		}
	}
	for _, p := range rep.PingPong {
		fmt.Fprintf(w, "\n== ping-pong, IPv%d, %d round trips one at a time, 64 B ==\n", p.Family, p.Trips)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "server\tp50 µs\tx\tx +chan\tp99 µs\tx\tx +chan\tserver CPU µs/request\tx +chan\tcsw/request\tlost\t")
		for _, s := range p.Summary {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t\n", s.Server, micros(float64(s.P50NS)), s.P50Ratio, s.P50ChanRatio,
				micros(float64(s.P99NS)), s.P99Ratio, s.P99ChanRatio, micros(float64(s.ServerCPU)), s.ServerCPUChanRatio, s.ServerSwitches, s.Lost)
		}
		tw.Flush()
		for _, s := range p.Summary {
			if len(s.Errors) > 0 {
				fmt.Fprintf(w, "  %s: %s\n", s.Server, strings.Join(s.Errors, "; "))
			}
		}
	}
	if len(rep.Targets) > 0 {
		fmt.Fprintf(w, "\n== targets (udpstream; ratios in the same round, median over rounds) ==\n")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, t := range rep.Targets {
			verdict := "FAIL"
			if t.Pass {
				verdict = "PASS"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t(limit %s)\n", verdict, t.Target, t.Run, t.Value, t.Limit)
		}
		tw.Flush()
	}
	for _, n := range m.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// rateString formats datagrams per second.
func rateString(f figure) string {
	v := float64(f)
	switch {
	case !f.ok():
		return "n/a"
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', 2, 64) + "M"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'f', 1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

// micros formats nanoseconds as microseconds.
func micros(ns float64) string {
	if math.IsNaN(ns) {
		return "n/a"
	}
	return strconv.FormatFloat(ns/1e3, 'f', 1, 64)
}
