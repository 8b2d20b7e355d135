//go:build linux

package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/google/gopacket/afpacket"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// parseUDP reads what every receiver reads from an IP packet, as a packet
// socket of type SOCK_DGRAM returns it (the IP header first): source,
// destination, TTL or hop limit, and the payload. ok is false unless it is
// an unfragmented UDP datagram to port.
func parseUDP(b []byte, port uint16) (src netip.AddrPort, dst netip.Addr, ttl uint8, payload []byte, ok bool) {
	if len(b) < 1 {
		return
	}
	var udp []byte
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl+8 || b[9] != 17 || binary.BigEndian.Uint16(b[6:])&0x3fff != 0 {
			return
		}
		ttl = b[8]
		src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[12:16])), 0)
		dst = netip.AddrFrom4([4]byte(b[16:20]))
		udp = b[ihl:]
	case 6:
		if len(b) < 48 || b[6] != 17 {
			return
		}
		ttl = b[7]
		src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), 0)
		dst = netip.AddrFrom16([16]byte(b[24:40]))
		udp = b[40:]
	default:
		return
	}
	if binary.BigEndian.Uint16(udp[2:]) != port {
		return
	}
	n := int(binary.BigEndian.Uint16(udp[4:]))
	if n < 8 || n > len(udp) {
		return
	}
	src = netip.AddrPortFrom(src.Addr(), binary.BigEndian.Uint16(udp[0:]))
	return src, dst, ttl, udp[8:n], true
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// naiveBuffer is the naive receiver's buffer per packet, as its bufsize
// option was: room for any datagram the bench sends.
const naiveBuffer = 2048

// openNaivePacket is the design udpstream replaces: two AF_PACKET sockets
// of type SOCK_DGRAM, one for ETH_P_IP and one for ETH_P_IPV6, each read by
// a goroutine with blocking recvfrom into a buffer made for each packet,
// with no kernel filter: every IP packet on the host is copied to user
// space and its port checked there.
func openNaivePacket(c recvConfig, m *meter) (_ *session, err error) {
	hold, err := reservePort(c.port)
	if err != nil {
		return nil, err
	}
	var fds []int
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
		hold.Close()
	}
	defer func() {
		if err != nil {
			closeAll()
		}
	}()
	for _, proto := range []uint16{unix.ETH_P_IP, unix.ETH_P_IPV6} {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(proto)))
		if err != nil {
			return nil, os.NewSyscallError("socket AF_PACKET", err)
		}
		fds = append(fds, fd)
		// A receive timeout bounds each recvfrom, so that a loop notices
		// the stop flag.
		tv := unix.NsecToTimeval(int64(50 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return nil, os.NewSyscallError("setsockopt SO_RCVTIMEO", err)
		}
	}
	var stop atomic.Bool
	s := &session{
		interrupt: func() { stop.Store(true) },
		close:     closeAll,
	}
	port := uint16(c.port)
	for _, fd := range fds {
		l := m.newLane()
		s.loops = append(s.loops, func() {
			for !stop.Load() {
				buf := make([]byte, naiveBuffer)
				n, _, err := unix.Recvfrom(fd, buf, 0)
				if err != nil {
					if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
						continue
					}
					l.fail(os.NewSyscallError("recvfrom", err))
					return
				}
				src, dst, ttl, payload, ok := parseUDP(buf[:n], port)
				if !ok {
					l.other++
					continue
				}
				if l.take(src, dst, ttl, touch(payload)) {
					return
				}
			}
		})
	}
	return s, nil
}

// The gopacket receiver's ring: 4 MiB, as udpstream's default per family.
const (
	afpacketBlockSize = 128 << 10
	afpacketBlocks    = 32
)

// openAFPacket receives with github.com/google/gopacket/afpacket: one
// ETH_P_ALL socket on all interfaces with a TPACKET_V3 ring, read with
// ZeroCopyReadPacketData, and a classic BPF filter (built with
// golang.org/x/net/bpf) that passes only UDP to the port and drops the
// copies of outgoing packets that ETH_P_ALL also sees.
func openAFPacket(c recvConfig, m *meter) (_ *session, err error) {
	hold, err := reservePort(c.port)
	if err != nil {
		return nil, err
	}
	tp, err := afpacket.NewTPacket(
		afpacket.OptTPacketVersion(afpacket.TPacketVersion3),
		afpacket.OptSocketType(afpacket.SocketDgram),
		afpacket.OptFrameSize(2048),
		afpacket.OptBlockSize(afpacketBlockSize),
		afpacket.OptNumBlocks(afpacketBlocks),
		afpacket.OptBlockTimeout(4*time.Millisecond),
		afpacket.OptPollTimeout(50*time.Millisecond),
	)
	if err != nil {
		hold.Close()
		return nil, fmt.Errorf("afpacket: %w", err)
	}
	closeAll := func() {
		tp.Close()
		hold.Close()
	}
	prog, err := udpPortFilter(uint16(c.port))
	if err == nil {
		err = tp.SetBPF(prog)
	}
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("afpacket filter: %w", err)
	}
	var stop atomic.Bool
	port := uint16(c.port)
	l := m.newLane()
	loop := func() {
		for !stop.Load() {
			data, _, err := tp.ZeroCopyReadPacketData()
			if err != nil {
				if errors.Is(err, afpacket.ErrTimeout) {
					continue
				}
				l.fail(err)
				return
			}
			// Frames queued before the filter was attached may be anything.
			src, dst, ttl, payload, ok := parseUDP(data, port)
			if !ok {
				l.other++
				continue
			}
			if l.take(src, dst, ttl, touch(payload)) {
				return
			}
		}
	}
	return &session{
		loops:     []func(){loop},
		interrupt: func() { stop.Store(true) },
		close:     closeAll,
		extra: func() map[string]uint64 {
			_, v3, err := tp.SocketStats()
			if err != nil {
				return nil
			}
			return map[string]uint64{
				"kernel_packets":       uint64(v3.Packets()),
				"kernel_drops":         uint64(v3.Drops()),
				"kernel_queue_freezes": uint64(v3.QueueFreezes()),
			}
		},
	}, nil
}

// udpPortFilter is a classic BPF program for a packet socket of type
// SOCK_DGRAM bound to ETH_P_ALL (offset 0 is the IP header): it passes
// unfragmented UDP over IPv4 or IPv6 (no extension headers) to port, and
// drops everything else, outgoing copies included.
func udpPortFilter(port uint16) ([]bpf.RawInstruction, error) {
	// Instruction indexes of the jump targets.
	const (
		ipv6Check = 11
		accept    = 16
		drop      = 17
	)
	skip := func(from, to int) uint8 { return uint8(to - from - 1) }
	prog := []bpf.Instruction{
		0: bpf.LoadExtension{Num: bpf.ExtType},
		1: bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.PACKET_OUTGOING, SkipTrue: skip(1, drop)},
		2: bpf.LoadExtension{Num: bpf.ExtProto},
		3: bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.ETH_P_IP, SkipFalse: skip(3, ipv6Check)},
		// IPv4: protocol, no fragment, port after a header of IHL words.
		4:  bpf.LoadAbsolute{Off: 9, Size: 1},
		5:  bpf.JumpIf{Cond: bpf.JumpEqual, Val: 17, SkipFalse: skip(5, drop)},
		6:  bpf.LoadAbsolute{Off: 6, Size: 2},
		7:  bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x3fff, SkipTrue: skip(7, drop)},
		8:  bpf.LoadMemShift{Off: 0},
		9:  bpf.LoadIndirect{Off: 2, Size: 2},
		10: bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(port), SkipTrue: skip(10, accept), SkipFalse: skip(10, drop)},
		// IPv6: next header UDP, port after the fixed header.
		ipv6Check: bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.ETH_P_IPV6, SkipFalse: skip(ipv6Check, drop)},
		12:        bpf.LoadAbsolute{Off: 6, Size: 1},
		13:        bpf.JumpIf{Cond: bpf.JumpEqual, Val: 17, SkipFalse: skip(13, drop)},
		14:        bpf.LoadAbsolute{Off: 42, Size: 2},
		15:        bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(port), SkipTrue: skip(15, accept), SkipFalse: skip(15, drop)},
		accept:    bpf.RetConstant{Val: 0x40000},
		drop:      bpf.RetConstant{Val: 0},
	}
	return bpf.Assemble(prog)
}
