//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// monoClock turns Go times into CLOCK_MONOTONIC nanoseconds, a clock every
// process on the machine shares, so that the orchestrator can place a
// receiver's last datagram on its own timeline. Go's monotonic readings
// are CLOCK_MONOTONIC, so one offset, taken once, is enough, and reading
// the clock stays as cheap as time.Now.
type monoClock struct {
	base   time.Time
	baseNS int64
}

func newMonoClock() monoClock {
	var ts unix.Timespec
	t := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(fmt.Sprintf("clock_gettime(CLOCK_MONOTONIC): %v", err))
	}
	return monoClock{base: t, baseNS: ts.Nano()}
}

// ns returns t in CLOCK_MONOTONIC nanoseconds.
func (c monoClock) ns(t time.Time) int64 { return c.baseNS + int64(t.Sub(c.base)) }

// now returns the current CLOCK_MONOTONIC time in nanoseconds.
func (c monoClock) now() int64 { return c.ns(time.Now()) }

// usage is CPU time used, split as getrusage reports it, and the context
// switches: voluntary ones (blocking, mostly to wait for data) count the
// times a receiver went to sleep and had to be woken.
type usage struct {
	User, System           time.Duration
	Voluntary, Involuntary int64
}

func (u usage) sub(v usage) usage {
	return usage{
		User: u.User - v.User, System: u.System - v.System,
		Voluntary: u.Voluntary - v.Voluntary, Involuntary: u.Involuntary - v.Involuntary,
	}
}

// rusage returns the CPU time of this process (unix.RUSAGE_SELF, every
// thread) or of the calling thread (unix.RUSAGE_THREAD). A thread running
// on another CPU may be counted up to a scheduler tick late: a few
// milliseconds, small against a full run.
func rusage(who int) usage {
	var ru unix.Rusage
	if err := unix.Getrusage(who, &ru); err != nil {
		panic(fmt.Sprintf("getrusage: %v", err))
	}
	tv := func(t unix.Timeval) time.Duration {
		return time.Duration(t.Sec)*time.Second + time.Duration(t.Usec)*time.Microsecond
	}
	return usage{User: tv(ru.Utime), System: tv(ru.Stime), Voluntary: ru.Nvcsw, Involuntary: ru.Nivcsw}
}

// threadCPU returns the CPU time of the calling thread, to the
// nanosecond: CLOCK_THREAD_CPUTIME_ID brings the running thread's count up
// to date, where getrusage(RUSAGE_THREAD) may lag by a scheduler tick.
// The kernel charges softirq work to the task it interrupted, so a
// sender's time includes the loopback delivery it triggered.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		panic(fmt.Sprintf("clock_gettime(CLOCK_THREAD_CPUTIME_ID): %v", err))
	}
	return time.Duration(ts.Nano())
}

// processCPU returns the CPU time of this process, all threads, as
// CLOCK_PROCESS_CPUTIME_ID counts it.
func processCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts); err != nil {
		panic(fmt.Sprintf("clock_gettime(CLOCK_PROCESS_CPUTIME_ID): %v", err))
	}
	return time.Duration(ts.Nano())
}

// userHZ is the unit of /proc/stat: USER_HZ, 100 on every Linux
// architecture Go supports.
const userHZ = 100

// machineBusy returns the CPU time all CPUs of the machine have spent
// busy since boot: the first line of /proc/stat less idle and iowait. The
// file is not per namespace: it counts every process on the machine.
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 8 || string(f[0]) != "cpu" {
		return 0, errors.New("/proc/stat: no cpu line")
	}
	var busy int64
	// user nice system idle iowait irq softirq steal (guest time is
	// already part of user).
	for i, v := range f[1:9:9] {
		if i == 3 || i == 4 {
			continue
		}
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		busy += n
	}
	return time.Duration(busy) * (time.Second / userHZ), nil
}

// busySample is the machine's busy CPU time at a moment.
type busySample struct {
	at   int64 // CLOCK_MONOTONIC ns
	busy time.Duration
}

// busySampler reads /proc/stat every interval, so that a measurement can
// end at the sample after its last datagram instead of after the idle
// timeout that told the receiver the traffic was over.
type busySampler struct {
	clock monoClock
	stop  chan struct{}
	done  chan struct{}

	mu      sync.Mutex
	samples []busySample // since the last mark, in time order
	err     error
}

// maxSamples bounds the samples kept between two marks.
const maxSamples = 100000

func startBusySampler(clock monoClock, interval time.Duration) *busySampler {
	s := &busySampler{clock: clock, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.sample(false)
			}
		}
	}()
	return s
}

// sample reads /proc/stat and keeps the reading, dropping those before it
// when reset is set.
func (s *busySampler) sample(reset bool) busySample {
	busy, err := machineBusy()
	smp := busySample{at: s.clock.now(), busy: busy}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil && s.err == nil {
		s.err = err
	}
	if reset {
		s.samples = s.samples[:0]
	}
	if len(s.samples) < maxSamples {
		s.samples = append(s.samples, smp)
	}
	return smp
}

// mark starts a measurement window and returns its first sample.
func (s *busySampler) mark() busySample { return s.sample(true) }

// after returns the first sample taken at or after t, reading a new one
// if none was.
func (s *busySampler) after(t int64) busySample {
	s.mu.Lock()
	for _, smp := range s.samples {
		if smp.at >= t {
			s.mu.Unlock()
			return smp
		}
	}
	s.mu.Unlock()
	return s.sample(false)
}

// close stops the sampler and returns the first error it met.
func (s *busySampler) close() error {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}
