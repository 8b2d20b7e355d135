//go:build linux

package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/udpstream/udpstream"
	"golang.org/x/sys/unix"
)

// The ping-pong servers, in table order; the first is the baseline.
var pingServers = []string{recvUDPConn, recvUDPConnChan, recvUDPStream}

// pingWarmup round trips precede the timed ones.
const pingWarmup = 50

// pingTimeout is how long the client waits for one answer.
const pingTimeout = time.Second

// maxAnswers bounds what an echo server answers, besides -max-time.
const maxAnswers = 1 << 24

// pingResult is one server's round trips in one family and round.
type pingResult struct {
	Server string `json:"server"`
	Round  int    `json:"round"`
	Trips  int    `json:"trips"` // timed round trips answered
	Lost   int    `json:"lost"`
	P50NS  int64  `json:"p50_ns"`
	P99NS  int64  `json:"p99_ns"`
	MinNS  int64  `json:"min_ns"`
	MaxNS  int64  `json:"max_ns"`
	// The echo server process's CPU time and context switches from when
	// it was ready to its end, over the requests sent.
	Requests       int    `json:"requests"`
	ServerCPUNS    int64  `json:"server_cpu_ns"`
	ServerSwitches int64  `json:"server_switches"`
	Error          string `json:"error,omitempty"`
}

// pingReport is the ping-pong of one family over the rounds.
type pingReport struct {
	Family       int           `json:"family"`
	Trips        int           `json:"trips"`
	Summary      []pingSummary `json:"summary"`
	Measurements []pingResult  `json:"measurements"`
}

// pingSummary is one server's ping-pong figures over the rounds.
type pingSummary struct {
	Server   string `json:"server"`
	Rounds   int    `json:"rounds"`
	Lost     int    `json:"lost"`
	P50NS    figure `json:"p50_ns"`
	P50Ratio figure `json:"p50_ratio"`
	P99NS    figure `json:"p99_ns"`
	P99Ratio figure `json:"p99_ratio"`
	// The same against net.UDPConn+chan, the channel API's fair anchor.
	P50ChanRatio figure `json:"p50_ratio_to_udpconn_chan"`
	P99ChanRatio figure `json:"p99_ratio_to_udpconn_chan"`
	// The server's CPU and context switches per request, the CPU also
	// against net.UDPConn+chan's.
	ServerCPU          figure   `json:"server_cpu_ns_per_request"`
	ServerCPUChanRatio figure   `json:"server_cpu_ratio_to_udpconn_chan"`
	ServerSwitches     figure   `json:"server_switches_per_request"`
	Errors             []string `json:"errors,omitempty"`
}

func (p *pingReport) summarize() {
	p.Summary = nil
	byRound := indexByRound(p.Measurements, func(m *pingResult) (int, string, bool) {
		return m.Round, m.Server, m.Error == "" && m.Trips > 0
	})
	for _, server := range pingServers {
		s := pingSummary{Server: server}
		var p50s, p99s, r50s, r99s, c50s, c99s, cpus, cpuRatios, switches []figure
		for _, m := range p.Measurements {
			if m.Server != server {
				continue
			}
			if m.Error != "" {
				s.Errors = append(s.Errors, fmt.Sprintf("round %d: %s", m.Round+1, m.Error))
				continue
			}
			s.Rounds++
			s.Lost += m.Lost
			p50s = append(p50s, figure(m.P50NS))
			p99s = append(p99s, figure(m.P99NS))
			if base := byRound[m.Round][pingServers[0]]; base != nil {
				r50s = append(r50s, ratio(float64(m.P50NS), float64(base.P50NS)))
				r99s = append(r99s, ratio(float64(m.P99NS), float64(base.P99NS)))
			}
			cpus = append(cpus, serverCPU(&m))
			switches = append(switches, ratio(float64(m.ServerSwitches), float64(m.Requests)))
			if base := byRound[m.Round][recvUDPConnChan]; base != nil {
				c50s = append(c50s, ratio(float64(m.P50NS), float64(base.P50NS)))
				c99s = append(c99s, ratio(float64(m.P99NS), float64(base.P99NS)))
				cpuRatios = append(cpuRatios, ratio(float64(serverCPU(&m)), float64(serverCPU(base))))
			}
		}
		s.P50NS, s.P99NS = median(p50s), median(p99s)
		s.P50Ratio, s.P99Ratio = median(r50s), median(r99s)
		s.P50ChanRatio, s.P99ChanRatio = median(c50s), median(c99s)
		s.ServerCPU, s.ServerCPUChanRatio, s.ServerSwitches = median(cpus), median(cpuRatios), median(switches)
		p.Summary = append(p.Summary, s)
	}
}

// serverCPU is an echo server's CPU per request.
func serverCPU(m *pingResult) figure { return ratio(float64(m.ServerCPUNS), float64(m.Requests)) }

func (p *pingReport) summaryOf(server string) *pingSummary {
	for i := range p.Summary {
		if p.Summary[i].Server == server {
			return &p.Summary[i]
		}
	}
	return nil
}

// pingPong times round trips through one echo server.
func (o *orchestrator) pingPong(family int, server string, round int) pingResult {
	res := pingResult{Server: server, Round: round}
	if err := o.pingPongInto(&res, family, server); err != nil {
		res.Error = err.Error()
	}
	return res
}

func (o *orchestrator) pingPongInto(res *pingResult, family int, server string) (err error) {
	port := o.cfg.port + 3
	c, err := startReady(roleEcho, o.verbose,
		"-server", server,
		"-port", strconv.Itoa(port),
		"-max-time", (o.cfg.timeout + 5*time.Second).String())
	if err != nil {
		return err
	}
	defer c.finishInto(&err)
	rtts, lost, err := pingClient(netip.AddrPortFrom(loopback(family), uint16(port)), o.cfg.pingPong, time.Now().Add(o.cfg.timeout))
	res.Lost, res.Trips = lost, len(rtts)
	res.Requests = pingWarmup + len(rtts) + lost
	// Told to stop, the server says what answering cost it.
	c.stdin.Close()
	var cost echoCost
	if cerr := c.next(childFinishTimeout, &cost); cerr != nil && err == nil {
		err = cerr
	}
	res.ServerCPUNS, res.ServerSwitches = cost.CPUNS, cost.Switches
	if len(rtts) > 0 {
		slices.Sort(rtts)
		at := func(q float64) int64 { return int64(rtts[min(len(rtts)-1, int(q*float64(len(rtts))))]) }
		res.P50NS, res.P99NS = at(0.50), at(0.99)
		res.MinNS, res.MaxNS = int64(rtts[0]), int64(rtts[len(rtts)-1])
	}
	return err
}

// pingClient sends 64-byte requests to dst one at a time, each waiting for
// its answer (or pingTimeout), and returns the round-trip times of the
// trips after the warm-up and how many went unanswered.
func pingClient(dst netip.AddrPort, trips int, deadline time.Time) ([]time.Duration, int, error) {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
	if err != nil {
		return nil, 0, err
	}
	defer conn.Close()
	req := make([]byte, 64)
	resp := make([]byte, 2048)
	rtts := make([]time.Duration, 0, trips)
	lost := 0
	for i := range pingWarmup + trips {
		if time.Now().After(deadline) {
			return rtts, lost, fmt.Errorf("deadline passed after %d round trips", i)
		}
		binary.BigEndian.PutUint64(req, uint64(i))
		t0 := time.Now()
		if _, err := conn.Write(req); err != nil {
			return rtts, lost, err
		}
		if err := conn.SetReadDeadline(t0.Add(pingTimeout)); err != nil {
			return rtts, lost, err
		}
		for {
			n, err := conn.Read(resp)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					lost++
					break
				}
				return rtts, lost, err
			}
			if n == len(req) && binary.BigEndian.Uint64(resp) == uint64(i) {
				if i >= pingWarmup {
					rtts = append(rtts, time.Since(t0))
				}
				break
			}
			// A late answer to an earlier request: keep waiting for ours.
		}
	}
	return rtts, lost, nil
}

// echoCost is what an echo server says at its end: its CPU time and
// context switches from when it was ready.
type echoCost struct {
	CPUNS    int64 `json:"cpu_ns"`
	Switches int64 `json:"switches"`
}

// echoMain is the echo role: a ping-pong server that answers each
// datagram with its payload until its standard input closes or -max-time
// passes. It says {"ready":true} once it listens, and an echoCost at its
// end.
func echoMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", recvUDPConn, "which server: "+fmt.Sprint(pingServers))
	port := fs.Int("port", 0, "UDP port to answer on")
	maxTime := fs.Duration("max-time", time.Minute, "stop after this long whatever happens")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), *maxTime)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	var start usage
	ready := func() error {
		start = rusage(unix.RUSAGE_SELF)
		return json.NewEncoder(stdout).Encode(map[string]bool{"ready": true})
	}
	var err error
	switch *server {
	case recvUDPConn:
		err = echoUDPConn(ctx, *port, ready)
	case recvUDPConnChan:
		err = echoUDPConnChan(ctx, *port, ready)
	case recvUDPStream:
		err = echoUDPStream(ctx, *port, ready)
	default:
		err = fmt.Errorf("unknown server %q", *server)
	}
	u := rusage(unix.RUSAGE_SELF).sub(start)
	if err == nil {
		err = json.NewEncoder(stdout).Encode(echoCost{CPUNS: int64(u.User + u.System), Switches: u.Voluntary + u.Involuntary})
	}
	if err != nil {
		fmt.Fprintf(stderr, "bench echo: %v\n", err)
		return 1
	}
	return 0
}

// echoUDPConn answers from a dual-stack net.UDPConn on [::]:port.
func echoUDPConn(ctx context.Context, port int, ready func() error) error {
	pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(port))
	if err != nil {
		return err
	}
	conn := pc.(*net.UDPConn)
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(pastDeadline) })
	defer stop()
	if err := ready(); err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	for range maxAnswers {
		n, _, _, src, err := conn.ReadMsgUDPAddrPort(buf, nil)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if _, err := conn.WriteToUDPAddrPort(buf[:n], src); err != nil {
			return err
		}
	}
	return nil
}

// echoUDPConnChan answers as net.UDPConn+chan receives: one goroutine
// reads the socket and hands each datagram over a channel; the consumer
// answers it.
func echoUDPConnChan(ctx context.Context, port int, ready func() error) error {
	u, err := listenUDPConnChan(port)
	if err != nil {
		return err
	}
	defer u.conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = u.conn.SetReadDeadline(pastDeadline) })
	defer stop()
	var rerr error
	go u.read(func(err error) { rerr = err })
	if err := ready(); err != nil {
		return err
	}
	answered := 0
	for it := range u.ch {
		if _, err := u.conn.WriteToUDPAddrPort(it.b, it.src); err != nil {
			return err
		}
		if answered++; answered == maxAnswers {
			return nil
		}
	}
	// The channel is closed after read has set rerr.
	return rerr
}

// echoUDPStream answers with Packet.Reply from a udpstream stream with
// default options and the Payload decoder.
func echoUDPStream(ctx context.Context, port int, ready func() error) error {
	s, err := udpstream.Open(ctx, uint16(port), udpstream.Payload)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := ready(); err != nil {
		return err
	}
	answered := 0
	for p := range s.Packets() {
		if p.Err != nil {
			continue
		}
		if err := p.Reply(p.Value); err != nil {
			return err
		}
		if answered++; answered == maxAnswers {
			break
		}
	}
	return s.Err()
}
