//go:build linux

package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The receivers, in table order. The first is the baseline of the ratios.
const (
	recvUDPConn       = "net.UDPConn"
	recvXNet          = "x/net-batch"
	recvNaive         = "naive-packet"
	recvAFPacket      = "gopacket-afpacket"
	recvUDPStream     = "udpstream"
	recvUDPStreamCopy = "udpstream-copy"
	recvUDPStreamBuf  = "udpstream-buffer"
	recvUDPStreamFan  = "udpstream-fanout2"
	recvUDPStreamSock = "udpstream-socket"
	recvUDPConnChan   = "net.UDPConn+chan"
	recvRingFloor     = "ring-floor"
	recvRingChanFloor = "ring+chan-floor"
	recvUDPStreamKern = "udpstream-kernel"
)

var receiverNames = []string{recvUDPConn, recvUDPConnChan, recvXNet, recvNaive, recvAFPacket, recvRingFloor, recvRingChanFloor,
	recvUDPStream, recvUDPStreamCopy, recvUDPStreamBuf, recvUDPStreamFan, recvUDPStreamSock, recvUDPStreamKern}

// floors are the receivers every receiver's CPU is also set against: what
// a channel over a plain socket costs, and what udpstream's ring walk
// costs bare and with a bare channel handover.
var floors = []string{recvUDPConnChan, recvRingFloor, recvRingChanFloor}

// recvConfig is what a receiver is told about the traffic it waits for.
// Every receiver listens on both families.
type recvConfig struct {
	port  int
	count uint64
}

// openers start each receiver's sockets.
var openers = map[string]func(recvConfig, *meter) (*session, error){
	recvUDPConn:       openUDPConn,
	recvXNet:          openXNetBatch,
	recvNaive:         openNaivePacket,
	recvAFPacket:      openAFPacket,
	recvUDPStream:     openUDPStream,
	recvUDPStreamCopy: openUDPStreamCopy,
	recvUDPStreamBuf:  openUDPStreamBuffer,
	recvUDPStreamFan:  openUDPStreamFanout,
	recvUDPStreamSock: openUDPStreamSocket,
	recvUDPStreamKern: openUDPStreamKernel,
	recvUDPConnChan:   openUDPConnChan,
	recvRingFloor:     openRingFloor,
	recvRingChanFloor: openRingChanFloor,
}

// session is one receiver at work.
type session struct {
	// loops receive, one per goroutine. Each returns when its lane has
	// seen the count or after interrupt.
	loops []func()
	// interrupt makes every loop return soon; it may block until they
	// have.
	interrupt func()
	// close releases the sockets once the loops have returned.
	close func()
	// extra returns the receiver's own counters (kernel drops and the
	// like), once the loops have returned; it may be nil.
	extra func() map[string]uint64
}

// meter counts what the loops of one receiver process deliver and times
// it: CPU from the first datagram on, and the first and last datagram.
type meter struct {
	count uint64
	clock monoClock

	first     sync.Once
	firstTime time.Time
	firstCPU  usage

	reached     chan struct{} // closed when a lane has seen count datagrams
	reachedOnce sync.Once

	mu    sync.Mutex
	lanes []*lane
}

func newMeter(count uint64) *meter {
	return &meter{count: count, clock: newMonoClock(), reached: make(chan struct{})}
}

// lane is the tally of one receive loop. Only its loop writes it, without
// atomics, except seen, which it publishes every publishEvery datagrams
// for the idle check; the rest is read once the loop has returned.
type lane struct {
	m     *meter
	n     uint64    // datagrams of the bench's traffic delivered
	sum   uint64    // what was read of them, so that no read is optimized away
	other uint64    // frames read that were not the bench's traffic
	last  time.Time // of the last datagram, to within publishEvery
	err   error     // the first unexpected error, which ended the loop
	seen  atomic.Uint64
	_     [64]byte // keeps two lanes' counters off one cache line
}

const publishEvery = 64

func (m *meter) newLane() *lane {
	l := &lane{m: m}
	m.mu.Lock()
	m.lanes = append(m.lanes, l)
	m.mu.Unlock()
	return l
}

// take counts one datagram of the bench's traffic, with what the receiver
// read of it, and reports whether the lane has now seen the count.
func (l *lane) take(src netip.AddrPort, dst netip.Addr, ttl uint8, touched uint16) (done bool) {
	if l.n == 0 {
		l.m.begin()
	}
	l.n++
	l.sum += uint64(src.Port()) + uint64(ttl) + uint64(touched)
	if dst.Is4() {
		l.sum++
	}
	if l.n%publishEvery == 0 {
		l.seen.Store(l.n)
		l.last = time.Now()
	}
	if l.n == l.m.count {
		l.last = time.Now()
		l.m.reachedOnce.Do(func() { close(l.m.reached) })
		return true
	}
	return false
}

// fail records an unexpected error that ends the lane's loop.
func (l *lane) fail(err error) {
	if l.err == nil {
		l.err = err
	}
}

// begin records the first datagram of the process.
func (m *meter) begin() {
	m.first.Do(func() {
		m.firstCPU = rusage(unix.RUSAGE_SELF)
		m.firstTime = time.Now()
	})
}

// published sums the lanes' published counts.
func (m *meter) published() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n uint64
	for _, l := range m.lanes {
		n += l.seen.Load()
	}
	return n
}

// await returns why the receiver should stop: it has seen the count;
// the sender finished and idle passed without a new datagram; or maxTime
// passed.
func (m *meter) await(senderDone <-chan struct{}, idle, maxTime time.Duration) string {
	timeout := time.NewTimer(maxTime)
	defer timeout.Stop()
	select {
	case <-m.reached:
		return "count"
	case <-timeout.C:
		return "timeout"
	case <-senderDone:
	}
	tick := time.NewTicker(max(idle/20, time.Millisecond))
	defer tick.Stop()
	seen, changed := m.published(), time.Now()
	for {
		select {
		case <-m.reached:
			return "count"
		case <-timeout.C:
			return "timeout"
		case now := <-tick.C:
			if n := m.published(); n != seen {
				seen, changed = n, now
			} else if now.Sub(changed) >= idle {
				return "idle"
			}
		}
	}
}

// recvResult is what a receiver process reports, as one JSON line.
type recvResult struct {
	Receiver  string `json:"receiver"`
	Delivered uint64 `json:"delivered"`
	Other     uint64 `json:"other"`    // frames read that were not the bench's traffic
	FirstNS   int64  `json:"first_ns"` // CLOCK_MONOTONIC of the first datagram
	LastNS    int64  `json:"last_ns"`  // and of the last
	UserNS    int64  `json:"user_ns"`  // CPU from the first datagram to the end
	SystemNS  int64  `json:"system_ns"`
	// Context switches of all threads from the first datagram to the end.
	VoluntarySwitches   int64             `json:"voluntary_switches"`
	InvoluntarySwitches int64             `json:"involuntary_switches"`
	Stop                string            `json:"stop"` // count, idle or timeout
	Sum                 uint64            `json:"sum"`
	Extra               map[string]uint64 `json:"extra,omitempty"`
	Error               string            `json:"error,omitempty"`
}

// receiverMain is the receiver role: it opens one receiver, says
// {"ready":true} on standard output, receives until it has seen -count
// datagrams, or -idle after a line on standard input says the sender is
// done (or it closes), or -max-time, and then prints a recvResult.
func receiverMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("receiver", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("receiver", "", "which receiver: "+fmt.Sprint(receiverNames))
	port := fs.Int("port", 0, "UDP port of the traffic")
	count := fs.Uint64("count", 0, "datagrams the sender sends")
	idle := fs.Duration("idle", 300*time.Millisecond, "stop this long after the last datagram once the sender is done")
	maxTime := fs.Duration("max-time", time.Minute, "stop after this long whatever happens")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of this receiver process to `file`")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	open, ok := openers[*name]
	if !ok || *port <= 0 || *port > 65535 || *count == 0 {
		fmt.Fprintf(stderr, "bench receiver: need -receiver (one of %v), -port and -count\n", receiverNames)
		return exitUsage
	}
	res, err := receive(*name, open, recvConfig{port: *port, count: *count}, *idle, *maxTime, *cpuProfile, stdout)
	if err != nil {
		res.Error = err.Error()
	}
	if err := json.NewEncoder(stdout).Encode(res); err != nil {
		fmt.Fprintf(stderr, "bench receiver: %v\n", err)
		return 1
	}
	return 0
}

func receive(name string, open func(recvConfig, *meter) (*session, error), cfg recvConfig, idle, maxTime time.Duration, cpuProfile string, stdout io.Writer) (recvResult, error) {
	res := recvResult{Receiver: name}
	m := newMeter(cfg.count)
	s, err := open(cfg, m)
	if err != nil {
		return res, fmt.Errorf("opening %s: %w", name, err)
	}
	defer s.close()
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return res, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return res, err
		}
		defer pprof.StopCPUProfile()
	}

	senderDone := make(chan struct{})
	go func() {
		// A line, or the end of input, says the sender is done.
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		close(senderDone)
	}()
	var wg sync.WaitGroup
	for _, loop := range s.loops {
		wg.Go(loop)
	}
	if err := json.NewEncoder(stdout).Encode(map[string]bool{"ready": true}); err != nil {
		return res, err
	}

	res.Stop = m.await(senderDone, idle, maxTime)
	end := rusage(unix.RUSAGE_SELF)
	s.interrupt()
	returned := make(chan struct{})
	go func() { wg.Wait(); close(returned) }()
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		return res, errors.New("receive loops did not return within 10s of the interrupt")
	}

	var last time.Time
	var errs []error
	for _, l := range m.lanes {
		res.Delivered += l.n
		res.Other += l.other
		res.Sum += l.sum
		if l.last.After(last) {
			last = l.last
		}
		if l.err != nil {
			errs = append(errs, l.err)
		}
	}
	if res.Delivered > 0 {
		cpu := end.sub(m.firstCPU)
		res.UserNS, res.SystemNS = int64(cpu.User), int64(cpu.System)
		res.VoluntarySwitches, res.InvoluntarySwitches = cpu.Voluntary, cpu.Involuntary
		res.FirstNS, res.LastNS = m.clock.ns(m.firstTime), m.clock.ns(last)
	}
	if s.extra != nil {
		res.Extra = s.extra()
	}
	return res, errors.Join(errs...)
}

// touch reads the first and last byte of a payload: the receivers' stand-in
// for using it.
func touch(p []byte) uint16 {
	if len(p) == 0 {
		return 0
	}
	return uint16(p[0]) + uint16(p[len(p)-1])
}
