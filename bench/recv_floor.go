//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/udpstream/udpstream"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The floors: what udpstream cannot cost less than, built from the same
// kernel mechanisms with nothing on top. They share udpstream's ring
// geometry and its way of waiting, so that what udpstream spends above
// them is its own work: classifying, checking, building the Header,
// decoding, counting and handing over.
const (
	floorFrameSize = 2048                        // udpstream's ring slot
	floorBlockSize = 128 << 10                   // and its kernel allocation unit
	floorRingBytes = udpstream.DefaultBufferSize // per family, as udpstream's default
	floorVnetHdr   = 10                          // struct virtio_net_hdr, before each frame
	// The coalescing rule of udpstream's receive loop: a ring that held
	// this many frames when found empty is busy, and the loop sleeps
	// floorCoalesce before looking again instead of waiting.
	floorCoalesceBatch = 4
	floorCoalesce      = 250 * time.Microsecond
)

// Offsets in a TPACKET_V2 frame (linux/if_packet.h).
const (
	tp2Status  = 0
	tp2Len     = 4
	tp2Snaplen = 8
	tp2Mac     = 12
	tp2Net     = 14
)

// floorItem is what ring+chan-floor hands over: the fields a receiver
// reads, padded to the size of the Packet the udpstream receiver gets, so
// that the channel copies as many bytes per datagram as udpstream's does.
type floorItem struct {
	floorFields
	_ [unsafe.Sizeof(udpstream.Packet[uint16]{}) - unsafe.Sizeof(floorFields{})]byte
}

type floorFields struct {
	src     netip.AddrPort
	dst     netip.Addr
	ttl     uint8
	touched uint16
}

// floorRing is one packet socket of a floor: udpstream's kind (SOCK_RAW
// with PACKET_VNET_HDR, bound to one family's EtherType on every
// interface, a TPACKET_V2 ring of udpstream's default size), its filter,
// and its wait: a private epoll instance on the runtime poller, the socket
// muted there while the loop sleeps between batches.
type floorRing struct {
	fd     int
	epfd   int
	file   *os.File
	rc     syscall.RawConn
	muted  bool
	ring   []byte
	frames int
	next   int
}

// openFloorRing opens the packet socket of one family, filtered for port.
func openFloorRing(family int, port uint16) (_ *floorRing, err error) {
	proto := uint16(unix.ETH_P_IP)
	if family == 6 {
		proto = unix.ETH_P_IPV6
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket AF_PACKET", err)
	}
	r := &floorRing{fd: fd, epfd: -1}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	prog, err := floorFilter(family, port)
	if err != nil {
		return nil, err
	}
	if err := attachFilter(fd, prog); err != nil {
		return nil, err
	}
	for _, o := range []struct {
		name      string
		opt, val  int
		mandatory bool
	}{
		{"PACKET_VNET_HDR", unix.PACKET_VNET_HDR, 1, true},
		{"PACKET_VERSION", unix.PACKET_VERSION, unix.TPACKET_V2, true},
	} {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, o.opt, o.val); err != nil {
			return nil, os.NewSyscallError("setsockopt "+o.name, err)
		}
	}
	blocks := floorRingBytes / floorBlockSize
	req := unix.TpacketReq{
		Block_size: floorBlockSize,
		Block_nr:   uint32(blocks),
		Frame_size: floorFrameSize,
		Frame_nr:   uint32(blocks * (floorBlockSize / floorFrameSize)),
	}
	if err := unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return nil, os.NewSyscallError("setsockopt PACKET_RX_RING", err)
	}
	if r.ring, err = unix.Mmap(fd, 0, blocks*floorBlockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return nil, os.NewSyscallError("mmap", err)
	}
	r.frames = int(req.Frame_nr)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(proto)}); err != nil {
		return nil, os.NewSyscallError("bind", err)
	}
	if r.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := r.setEvents(unix.EPOLL_CTL_ADD, unix.EPOLLIN); err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(r.epfd, true); err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	r.file = os.NewFile(uintptr(r.epfd), fmt.Sprintf("floor-ipv%d-epoll", family))
	r.epfd = -1 // the file owns it
	if r.rc, err = r.file.SyscallConn(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *floorRing) setEvents(op int, events uint32) error {
	epfd := r.epfd
	if r.file != nil {
		epfd = int(r.file.Fd())
	}
	ev := unix.EpollEvent{Events: events, Fd: int32(r.fd)}
	return os.NewSyscallError("epoll_ctl", unix.EpollCtl(epfd, op, r.fd, &ev))
}

func (r *floorRing) status(i int) *uint32 {
	return (*uint32)(unsafe.Pointer(&r.ring[i*floorFrameSize+tp2Status]))
}

// peek returns the IP packet of the next frame, or ok false when the ring
// is empty. The frame belongs to user space until release.
func (r *floorRing) peek() (pkt []byte, ok bool) {
	if atomic.LoadUint32(r.status(r.next))&unix.TP_STATUS_USER == 0 {
		return nil, false
	}
	f := r.ring[r.next*floorFrameSize : (r.next+1)*floorFrameSize]
	n := int(binary.NativeEndian.Uint32(f[tp2Len:]))
	snap := int(binary.NativeEndian.Uint32(f[tp2Snaplen:]))
	mac := int(binary.NativeEndian.Uint16(f[tp2Mac:]))
	net := int(binary.NativeEndian.Uint16(f[tp2Net:]))
	if net < mac || mac+snap > len(f) || snap < n {
		return nil, true
	}
	return f[net : mac+snap], true
}

func (r *floorRing) release() {
	atomic.StoreUint32(r.status(r.next), unix.TP_STATUS_KERNEL)
	if r.next++; r.next == r.frames {
		r.next = 0
	}
}

// wait blocks in the runtime poller until a frame is ready or the read
// deadline passes.
func (r *floorRing) wait() error {
	if r.muted {
		if err := r.setEvents(unix.EPOLL_CTL_MOD, unix.EPOLLIN); err != nil {
			return err
		}
		r.muted = false
	}
	return r.rc.Read(func(uintptr) bool {
		return atomic.LoadUint32(r.status(r.next))&unix.TP_STATUS_USER != 0
	})
}

// pause mutes the socket and sleeps the coalescing interval.
func (r *floorRing) pause() error {
	if !r.muted {
		if err := r.setEvents(unix.EPOLL_CTL_MOD, 0); err != nil {
			return err
		}
		r.muted = true
	}
	spec := unix.NsecToTimespec(int64(floorCoalesce))
	_ = unix.Nanosleep(&spec, nil)
	return nil
}

func (r *floorRing) close() {
	if r.ring != nil {
		_ = unix.Munmap(r.ring)
	}
	if r.file != nil {
		r.file.Close()
	} else if r.epfd >= 0 {
		unix.Close(r.epfd)
	}
	unix.Close(r.fd)
}

// walk reads the ring until stop is set or take says the lane is done:
// frames while there are, then the coalescing pause or a wait, as
// udpstream's loop does, yielding before the pause as it does (the pause
// is a system call that keeps the thread: a consumer readied by the walk
// runs first, here, rather than on a thread the runtime wakes for it).
// take gets each frame's IP packet.
func (r *floorRing) walk(stop *atomic.Bool, take func([]byte) bool, fail func(error)) {
	busy := 0 // frames since the ring was last found empty
	for !stop.Load() {
		pkt, ok := r.peek()
		if !ok {
			var err error
			if busy >= floorCoalesceBatch {
				runtime.Gosched()
				err = r.pause()
			} else {
				err = r.wait()
			}
			busy = 0
			if err != nil && !endOfLoop(err) {
				fail(err)
				return
			}
			continue
		}
		busy++
		done := take(pkt)
		r.release()
		if done {
			return
		}
	}
}

// openRingFloor is ring-floor: udpstream's packet sockets, filter and ring
// walk, one goroutine per family, reading only what every receiver reads
// (the ports, addresses, TTL and two payload bytes) and handing nothing
// over.
func openRingFloor(c recvConfig, m *meter) (*session, error) {
	return openFloor(c, m, func(l *lane) func(floorFields) bool {
		return func(f floorFields) bool { return l.take(f.src, f.dst, f.ttl, f.touched) }
	}, nil)
}

// openRingChanFloor is ring+chan-floor: ring-floor, each datagram then
// sent on a channel of udpstream's default capacity as a value the size
// of udpstream's Packet, to one consumer goroutine that ranges over it.
func openRingChanFloor(c recvConfig, m *meter) (*session, error) {
	ch := make(chan floorItem, udpstream.DefaultChannelCapacity)
	l := m.newLane()
	consumer := func() {
		for it := range ch {
			if l.take(it.src, it.dst, it.ttl, it.touched) {
				// Keep draining, so that no sender is left blocked.
				for range ch {
				}
				return
			}
		}
	}
	return openFloor(c, m, func(*lane) func(floorFields) bool {
		return func(f floorFields) bool {
			ch <- floorItem{floorFields: f}
			return false
		}
	}, &floorChan{consumer: consumer, close: func() { close(ch) }})
}

// floorChan is the consumer side of ring+chan-floor.
type floorChan struct {
	consumer func()
	close    func() // once every walk has returned
}

// openFloor opens both families' rings and a walk for each; deliver makes
// the walk's way of taking a parsed datagram (given the walk's own lane,
// which the channel floor leaves unused).
func openFloor(c recvConfig, m *meter, deliver func(*lane) func(floorFields) bool, fc *floorChan) (_ *session, err error) {
	hold, err := reservePort(c.port)
	if err != nil {
		return nil, err
	}
	var rings []*floorRing
	closeAll := func() {
		for _, r := range rings {
			r.close()
		}
		hold.Close()
	}
	defer func() {
		if err != nil {
			closeAll()
		}
	}()
	for _, fam := range []int{4, 6} {
		r, err := openFloorRing(fam, uint16(c.port))
		if err != nil {
			return nil, err
		}
		rings = append(rings, r)
	}
	var stop atomic.Bool
	port := uint16(c.port)
	var walks atomic.Int32
	walks.Store(int32(len(rings)))
	s := &session{
		interrupt: func() {
			stop.Store(true)
			for _, r := range rings {
				_ = r.file.SetReadDeadline(pastDeadline)
			}
		},
		close: closeAll,
	}
	for _, r := range rings {
		var l *lane
		if fc == nil {
			l = m.newLane()
		}
		give := deliver(l)
		take := func(pkt []byte) bool {
			src, dst, ttl, payload, ok := parseUDP(pkt, port)
			if !ok {
				if l != nil {
					l.other++
				}
				return false
			}
			return give(floorFields{src: src, dst: dst, ttl: ttl, touched: touch(payload)})
		}
		fail := func(err error) {
			if l != nil {
				l.fail(err)
			}
		}
		s.loops = append(s.loops, func() {
			r.walk(&stop, take, fail)
			if fc != nil && walks.Add(-1) == 0 {
				fc.close()
			}
		})
	}
	if fc != nil {
		s.loops = append(s.loops, fc.consumer)
	}
	return s, nil
}

// floorFilter is udpstream's kernel filter for a socket of one family on
// Ethernet and loopback (the bench's traffic is on loopback): it drops
// outgoing copies and frames for other hosts, passes IP fragments and
// IPv6 packets that start with an extension header (whose port only user
// space can judge), and UDP to port.
func floorFilter(family int, port uint16) ([]bpf.RawInstruction, error) {
	const eth = 14
	ins := []bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtType},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.PACKET_OUTGOING, SkipTrue: 255}, // patched: drop
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.PACKET_OTHERHOST, SkipTrue: 255},
	}
	if family == 4 {
		ins = append(ins,
			bpf.LoadAbsolute{Off: eth + 9, Size: 1},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: 17, SkipFalse: 255},
			bpf.LoadAbsolute{Off: eth + 6, Size: 2},
			bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x3fff, SkipTrue: 254}, // patched: accept
			bpf.LoadMemShift{Off: eth},
			bpf.LoadIndirect{Off: eth + 2, Size: 2},
		)
	} else {
		ins = append(ins,
			bpf.LoadAbsolute{Off: eth + 6, Size: 1},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: 17, SkipTrue: 5},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: 44, SkipTrue: 254}, // fragment
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: 254},  // hop-by-hop
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: 43, SkipTrue: 254}, // routing
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: 60, SkipTrue: 254}, // destination options
			bpf.Jump{Skip: 255},
			bpf.LoadAbsolute{Off: eth + 40 + 2, Size: 2},
		)
	}
	ins = append(ins,
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(port), SkipFalse: 1},
		bpf.RetConstant{Val: 0xffffffff}, // accept
		bpf.RetConstant{Val: 0},          // drop
	)
	// Jumps written 255 go to drop, 254 to accept.
	accept, drop := len(ins)-2, len(ins)-1
	for i, in := range ins {
		switch j := in.(type) {
		case bpf.JumpIf:
			j.SkipTrue = patch(j.SkipTrue, i, accept, drop)
			j.SkipFalse = patch(j.SkipFalse, i, accept, drop)
			ins[i] = j
		case bpf.Jump:
			j.Skip = uint32(patch(uint8(j.Skip), i, accept, drop))
			ins[i] = j
		}
	}
	return bpf.Assemble(ins)
}

// patch turns floorFilter's placeholder skips into the distance from
// instruction i to accept (254) or drop (255).
func patch(skip uint8, i, accept, drop int) uint8 {
	switch skip {
	case 254:
		return uint8(accept - i - 1)
	case 255:
		return uint8(drop - i - 1)
	}
	return skip
}
