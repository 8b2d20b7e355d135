package udpstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// system holds a stream's kernel resources.
type system struct {
	port    uint16
	mode    Mode // ModeRing or ModeSocket
	sources []source
	reserve *net.UDPConn // nil in monitor and kernel-verdict mode; in socket mode the first source's
	twin    *udpSocket   // in kernel-verdict mode, the socket that reserves the port and receives
	verdict *verdicts    // in kernel-verdict mode, the pairing of ring datagrams with twins
	joins   *memberships // nil without WithJoin
	watcher *addrWatcher
	local   *localAddrs
	spare   int // a packet socket not yet made one of sources, or -1

	mu          sync.Mutex // guards sources against close while polling drops
	closed      bool
	kernelDrops atomic.Uint64
}

// source is one way of receiving, with a receive goroutine of its own: a
// packet socket with its ring (ring_linux.go) or a UDP socket
// (socket_linux.go). receive runs its loop.
type source interface {
	// family is the source's address family, 4 or 6, or 0 for both.
	family() uint8
	// unblock makes a goroutine waiting on the source return, with a
	// read deadline in the past; no fd is closed under it.
	unblock()
	// kernelDrops returns the datagrams the kernel dropped at the source
	// since the last call.
	kernelDrops() uint64
	// close releases the source. No goroutine may use it after.
	close()
}

// receive is the loop of one receive goroutine, for the source's kind.
func receive[T any](ctx context.Context, src source, h *handler[T]) error {
	switch src := src.(type) {
	case *packetSocket:
		return receiveRing(ctx, src, h)
	case *udpSocket:
		return receiveSocket(ctx, src, h)
	}
	panic(fmt.Sprintf("udpstream: unknown source %T", src))
}

// openSystem reserves the port, subscribes to address changes and opens
// the sources of the stream's mode: one filtered packet socket per
// family (and per fanout member), or the UDP sockets of socket mode.
func openSystem(cfg *config, port uint16) (_ *system, err error) {
	s := &system{port: port, spare: -1, mode: cfg.mode}
	defer func() {
		if err != nil {
			s.close()
		}
	}()

	ifIndex := cfg.ifIndex
	ifName := cfg.ifName
	if ifName != "" {
		ifi, err := net.InterfaceByName(ifName)
		if err != nil {
			return nil, interfaceError(fmt.Sprintf("%q", ifName), err)
		}
		ifIndex = ifi.Index
	} else if ifIndex != 0 {
		ifi, err := net.InterfaceByIndex(ifIndex)
		if err != nil {
			return nil, interfaceError(fmt.Sprintf("with index %d", ifIndex), err)
		}
		ifName = ifi.Name
	}

	// A missing CAP_NET_RAW is the error to report, ahead of anything
	// that follows from it.
	reserve := port
	if cfg.monitor {
		reserve = 0
	}
	if s.mode == ModeAuto {
		s.mode = ModeRing
		if cfg.ringOnly() == "" {
			s.spare, err = checkPacketSockets(reserve)
			if errors.Is(err, os.ErrPermission) {
				s.mode, err = ModeSocket, nil
			}
		}
	}
	if s.mode == ModeSocket {
		if o := cfg.ringOnly(); o != "" {
			return nil, optionErr("%s needs ring mode: a UDP socket receives only what the kernel delivers to it", o)
		}
		if err := s.openSockets(cfg, port, ifName); err != nil {
			return nil, err
		}
		return s, s.watch(cfg, ifIndex)
	}
	if err != nil {
		return nil, err
	}
	if s.mode == ModeKernel {
		if o := cfg.kernelConflict(); o != "" {
			return nil, optionErr("%s and kernel-verdict mode exclude each other: %s", o, kernelConflicts[o])
		}
	}
	if s.spare < 0 {
		if s.spare, err = checkPacketSockets(reserve); err != nil {
			return nil, err
		}
	}
	switch {
	case s.mode == ModeKernel:
		s.twin, s.port, err = openTwinSocket(cfg, port, ifName)
		if err != nil {
			return nil, err
		}
	case !cfg.monitor:
		s.reserve, s.port, err = reservePort(cfg.network, port, ifName, false, false)
		if err != nil {
			return nil, err
		}
	}
	// The namespace's rules, read once: the kernel's verdicts follow
	// them. A reassembly timeout the caller chose overrides both
	// families' sysctls.
	rules := readNetRules()
	if cfg.reasmTimeoutSet {
		rules.fragTime4, rules.fragTime6 = cfg.reasmTimeout, cfg.reasmTimeout
	}
	ringBytes := max(cfg.bufferSize/cfg.fanout, minBufferSize)
	frames := 0
	for _, fam := range cfg.families() {
		group := noFanout
		if cfg.fanout > 1 {
			group = newFanout
		}
		for range cfg.fanout {
			fd := s.spare
			s.spare = -1 // openPacketSocket owns it now
			ps, id, err := openPacketSocket(fd, fam, s.port, ifIndex, ringBytes, group, cfg)
			if err != nil {
				return nil, err
			}
			ps.rules = rules
			s.sources = append(s.sources, ps)
			frames += ps.frames
			group = id
		}
	}
	if s.twin != nil {
		s.verdict = newVerdicts(s.twin, s.port, len(s.sources), frames)
	}
	return s, s.watch(cfg, ifIndex)
}

// watch subscribes to the host's address changes and multicast
// memberships, and joins the groups of WithJoin.
func (s *system) watch(cfg *config, ifIndex int) (err error) {
	// A UDP socket bound to an interface that is removed just receives
	// nothing more; the ring's packet socket is told, and so must a stream
	// in socket mode be, by the link's removal.
	bound := s.mode == ModeSocket && ifIndex != 0
	if s.watcher, err = newAddrWatcher(len(cfg.joins) > 0 || bound); err != nil {
		return err
	}
	if bound {
		s.watcher.gone = func() error {
			if _, err := net.InterfaceByIndex(ifIndex); err != nil {
				return &ifaceGoneError{ifIndex}
			}
			return nil
		}
	}
	s.local = s.watcher.la
	// A "udp" stream reserves with an AF_INET socket where the host has
	// no IPv6.
	_, inet6, bound := s.portConn()
	s.local.mcast4 = cfg.network == "udp4" || bound && !inet6
	return s.multicast(cfg, ifIndex)
}

// portConn returns the socket bound to the stream's port and whether it
// is an AF_INET6 one; ok is false in monitor mode, which has none.
func (s *system) portConn() (rc syscall.RawConn, inet6, ok bool) {
	switch {
	case s.twin != nil:
		return s.twin.rc, s.twin.inet6, true
	case s.reserve != nil:
		rc, err := s.reserve.SyscallConn()
		if err != nil {
			return nil, false, false
		}
		return rc, s.reserve.LocalAddr().(*net.UDPAddr).IP.To4() == nil, true
	}
	return nil, false, false
}

// newSender returns the sender of the stream's replies: nil in monitor
// mode, which has no socket of its own.
func (s *system) newSender(def SendOptions) *sender {
	if s.reserve != nil {
		return &sender{conn: s.reserve, def: def, local: s.local}
	}
	if rc, inet6, ok := s.portConn(); ok {
		return &sender{raw: rc, inet6: inet6, def: def, local: s.local}
	}
	return nil
}

// ifaceGoneError says that the interface a stream is bound to was removed.
type ifaceGoneError struct{ index int }

func (e *ifaceGoneError) Error() string {
	return fmt.Sprintf("interface %d is gone: %v", e.index, unix.ENODEV)
}

func (e *ifaceGoneError) Unwrap() error { return unix.ENODEV }

// interfaceError reports a failed interface lookup. The net package's
// "no such network interface" matches nothing errors.Is can name; the
// kernel's own answer for an unknown device, ENODEV, does.
func interfaceError(which string, err error) error {
	var serr *os.SyscallError
	if errors.As(err, &serr) {
		return fmt.Errorf("udpstream: looking up interface %s: %w", which, err)
	}
	return fmt.Errorf("udpstream: no interface %s: %w", which, unix.ENODEV)
}

// run starts one receive goroutine per packet socket, made by recv, and the
// address watcher, under one errgroup, and returns when all have returned.
// Cancellation reaches goroutines blocked in the poller as a read deadline
// in the past: no fd is closed while a goroutine may use it.
func (s *system) run(ctx context.Context, recv func(i int) func(context.Context) error) error {
	g, gctx := errgroup.WithContext(ctx)
	stop := context.AfterFunc(gctx, func() {
		for _, src := range s.sources {
			src.unblock()
		}
		_ = s.watcher.file.SetReadDeadline(time.Unix(1, 0))
	})
	defer stop()
	for i := range s.sources {
		f := recv(i)
		g.Go(func() error { return f(gctx) })
	}
	g.Go(func() error {
		err := s.watcher.watch()
		if gctx.Err() != nil {
			return nil
		}
		if gone := (*ifaceGoneError)(nil); errors.As(err, &gone) {
			return fmt.Errorf("udpstream: receiving: %w", err)
		}
		return fmt.Errorf("udpstream: watching local addresses: %w", err)
	})
	return g.Wait()
}

// receiveRing is the loop of a packet socket's receive goroutine: walk the
// ring while frames are ready, then wait in the poller. When the stream
// ends it counts what it leaves behind (see drain).
func receiveRing[T any](ctx context.Context, ps *packetSocket, h *handler[T]) error {
	defer drain(ps, h)
	if h.kv != nil {
		h.kv.own.ready = ps.ready // asked only while it sleeps
	}
	var m frameMeta
	batch := 0         // frames since the ring was last found empty
	rechecked := false // kernel-verdict mode: the ring looked at again for twins read
	for {
		pkt, tooLong, losing, ok := ps.peek(&m)
		if !ok && h.kv != nil {
			// Pair what the ring gave with the socket's twins. The time
			// is taken before a last look at the ring: the ring was
			// empty after it.
			at := h.kv.v.now()
			if ps.ready() {
				continue
			}
			if h.settleTwins(ctx, at) != nil {
				return nil
			}
			if h.n == 0 && h.kv.count > 0 {
				// Twins still to come, or the kernel's refusal to
				// learn: look again shortly, and at the ring meanwhile.
				_ = unix.Nanosleep(&twinPollSpec, nil)
				if ctx.Err() != nil {
					return nil
				}
				continue
			}
			if h.n == 0 && !rechecked && h.twinsWaiting() {
				// Twins read in that pass are judged against an empty
				// ring found after them: look once more before waiting.
				rechecked = true
				continue
			}
		}
		rechecked = false
		if !ok {
			if h.n > 0 {
				// Hand the batch over before sleeping or waiting, and
				// yield, so that the consumer runs now, on this thread,
				// rather than on another one woken to take it or, with
				// GOMAXPROCS=1, once the runtime notices this one asleep
				// in a system call. Then look again.
				if h.flush(ctx) != nil {
					return nil
				}
				runtime.Gosched()
				continue
			}
			if batch >= coalesceBatch {
				batch = 0
				if err := ps.mute(); err != nil {
					return fmt.Errorf("udpstream: receiving: %w", err)
				}
				// nanosleep, not time.Sleep: the runtime rounds a timer
				// below a millisecond up to one when its threads are idle.
				_ = unix.Nanosleep(&coalesceSpec, nil)
				if ctx.Err() != nil {
					return nil
				}
				continue
			}
			batch = 0
			if h.kv != nil {
				h.drainTwins()
				h.sleeping(true)
			}
			err := ps.wait()
			if h.kv != nil {
				h.sleeping(false)
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("udpstream: receiving: %w", err)
			}
			continue
		}
		batch++
		err := h.frame(ctx, ps, pkt, tooLong, losing, &m)
		ps.release()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// frame handles one frame peeked from the ring.
func (h *handler[T]) frame(ctx context.Context, ps *packetSocket, pkt []byte, tooLong, losing bool, m *frameMeta) error {
	h.p.env = frameEnv{rules: ps.rules, ifIndex: m.ifIndex, pktType: ps.pktType}
	if losing {
		h.counts.drops[dropKernel].Add(ps.kernelDrops())
	}
	if tooLong {
		// A super-packet is as many datagrams lost.
		return h.tooLong(ctx, pkt, m, gsoCount(pkt, m.ipLen, m.gso))
	}
	return h.handle(ctx, pkt, m)
}

// drain ends a receive goroutine's part of the stream. The socket stops
// taking frames, and what is left is counted: the frames still in the
// ring, classified as ever, with those that would have been delivered
// counted as abandoned, and the batch not handed over.
func drain[T any](ps *packetSocket, h *handler[T]) {
	h.discard()
	h.ending = true
	if h.kv != nil {
		h.abandonHeld()
	}
	if ps.stop() != nil {
		return // the socket is gone; so is what it held
	}
	var m frameMeta
	for {
		pkt, tooLong, losing, ok := ps.peek(&m)
		if !ok {
			return
		}
		_ = h.frame(context.Background(), ps, pkt, tooLong, losing, &m)
		ps.release()
	}
}

// Coalescing: a ring that held coalesceBatch frames or more when the
// receive goroutine last found it empty is busy, and the goroutine sleeps
// 250 µs before looking again instead of waiting in the poller. A
// TPACKET_V2 ring wakes its reader for every frame; under load that
// wakeup, not the datagram, is most of the cost, and a short sleep turns
// it into one wakeup per batch, as a NIC moderates its interrupts. A quiet
// ring (a request at a time) never holds that many frames, so it keeps an
// immediate wakeup. 250 µs of a saturated loopback is a few hundred
// frames, far from filling the default ring.
const coalesceBatch = 4

var (
	coalesceSpec = unix.NsecToTimespec((250 * time.Microsecond).Nanoseconds())
	twinPollSpec = unix.NsecToTimespec(twinPoll.Nanoseconds())
)

// pollKernelDrops collects the kernel's drop counts, which it resets on
// every read.
func (s *system) pollKernelDrops() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	for _, src := range s.sources {
		s.kernelDrops.Add(src.kernelDrops())
	}
}

// close releases everything. It is called once all goroutines are done.
func (s *system) close() {
	s.mu.Lock()
	if !s.closed {
		for _, src := range s.sources {
			s.kernelDrops.Add(src.kernelDrops())
		}
	}
	s.closed = true
	s.mu.Unlock()
	// Closing a packet socket with a ring waits for two RCU grace periods,
	// one after the other: packet_set_ring's synchronize_net, then
	// packet_release's. No system call merges them (tearing the ring down
	// with PACKET_RX_RING first only moves the first one), but closes that
	// run side by side share their grace periods: closing the sockets
	// together costs what closing one costs.
	var wg sync.WaitGroup
	for _, src := range s.sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src.close()
		}()
	}
	wg.Wait()
	if s.spare >= 0 {
		unix.Close(s.spare)
		s.spare = -1
	}
	if s.watcher != nil {
		s.watcher.close()
	}
	if s.reserve != nil && s.mode != ModeSocket { // a source's own in socket mode
		s.reserve.Close()
	}
	if s.twin != nil {
		s.twin.close()
	}
	s.joins.close()
}
