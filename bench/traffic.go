//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// sendBatch is how many datagrams one sendmmsg call carries.
const sendBatch = 64

// loopback returns the loopback address of an IP version.
func loopback(family int) netip.Addr {
	if family == 6 {
		return netip.IPv6Loopback()
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1})
}

// blaster sends UDP datagrams of one size to one address with sendmmsg(2),
// as fast as the kernel takes them. It calls sendmmsg directly
// (golang.org/x/sys/unix has no wrapper) on a blocking socket, as a raw
// system call, so that the Go runtime does not hand the sending thread's
// P to another thread, which would then spin, on every call: with x/net's
// WriteBatch that churn cost the sending process about as much CPU again
// as the sending itself, and it would count in every receiver's machine
// CPU.
type blaster struct {
	fd   int
	msgs []unix.Mmsghdr
	// What msgs point to, kept here so that it lives as long as they do.
	iov     unix.Iovec
	to      []byte // a raw sockaddr_in or sockaddr_in6
	payload []byte
}

// payloadByte is what the bench's payloads are filled with; receivers sum
// the first and last byte.
const payloadByte = 0xa5

func newBlaster(family int, dst netip.AddrPort, size int) (*blaster, error) {
	return newBlasterFrom(loopback(family), dst, size)
}

// newBlasterFrom is newBlaster with the source address src, of dst's
// family. The socket belongs to the network namespace of the calling
// thread.
func newBlasterFrom(src netip.Addr, dst netip.AddrPort, size int) (_ *blaster, err error) {
	family := 4
	if dst.Addr().Is6() {
		family = 6
	}
	domain := unix.AF_INET
	if family == 6 {
		domain = unix.AF_INET6
	}
	fd, err := sendSocket(domain, unix.SOCK_DGRAM, 0)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
		}
	}()
	b := &blaster{fd: fd, payload: make([]byte, size)}
	for i := range b.payload {
		b.payload[i] = payloadByte
	}
	port := [2]byte{byte(dst.Port() >> 8), byte(dst.Port())} // network order
	if family == 6 {
		if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: src.As16()}); err != nil {
			return nil, os.NewSyscallError("bind", err)
		}
		sa := unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: dst.Addr().As16()}
		sa.Port = *(*uint16)(unsafe.Pointer(&port))
		b.to = unsafe.Slice((*byte)(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet6)
	} else {
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
			return nil, os.NewSyscallError("bind", err)
		}
		sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: dst.Addr().As4()}
		sa.Port = *(*uint16)(unsafe.Pointer(&port))
		b.to = unsafe.Slice((*byte)(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet4)
	}
	b.iov.Base = &b.payload[0]
	b.iov.SetLen(len(b.payload))
	b.msgs = make([]unix.Mmsghdr, sendBatch)
	for i := range b.msgs {
		h := &b.msgs[i].Hdr
		h.Name = &b.to[0]
		h.Namelen = uint32(len(b.to))
		h.Iov = &b.iov
		h.SetIovlen(1)
	}
	return b, nil
}

func (b *blaster) close() { unix.Close(b.fd) }

// sendSocket opens a blocking socket for a sender, whose sends return
// within 100 ms when its buffer stays full.
func sendSocket(domain, typ, proto int) (int, error) {
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("setsockopt SO_SNDTIMEO", err)
	}
	return fd, nil
}

// sendmmsg sends the first n messages and returns how many the kernel
// took.
func (b *blaster) sendmmsg(n int) (int, error) {
	r, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(b.fd), uintptr(unsafe.Pointer(&b.msgs[0])), uintptr(n), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// send sends count datagrams, or fewer if deadline passes or stop is set
// first, and returns how many the kernel took.
func (b *blaster) send(count int, deadline time.Time, stop *atomic.Bool) (int, error) {
	sent := 0
	for sent < count {
		if stop != nil && stop.Load() {
			break
		}
		if time.Now().After(deadline) {
			return sent, fmt.Errorf("sent %d of %d datagrams before the deadline", sent, count)
		}
		n, err := b.sendmmsg(min(sendBatch, count-sent))
		sent += n
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return sent, os.NewSyscallError("sendmmsg", err)
		}
	}
	return sent, nil
}

// sendResult is what the sender of one measurement did.
type sendResult struct {
	Sent         int
	StartNS      int64 // CLOCK_MONOTONIC
	EndNS        int64
	CPUNS        int64 // the sending thread, loopback delivery included
	ProcessCPUNS int64 // the sending process, every thread
	Rate         float64
}

// datagramSender is a blaster or manySources.
type datagramSender interface {
	send(count int, deadline time.Time, stop *atomic.Bool) (int, error)
	close()
}

// blast sends count datagrams with b on a thread of its own, whose CPU
// time it measures.
func blast(b datagramSender, clock monoClock, count int, deadline time.Time) (sendResult, error) {
	runtime.LockOSThread()
	// Unlocked, not left to die with the goroutine: the child processes
	// are tied to their parent thread by Pdeathsig.
	defer runtime.UnlockOSThread()
	proc0, cpu0 := processCPU(), threadCPU()
	t0 := time.Now()
	n, err := b.send(count, deadline, nil)
	t1 := time.Now()
	cpu, proc := threadCPU()-cpu0, processCPU()-proc0
	r := sendResult{Sent: n, StartNS: clock.ns(t0), EndNS: clock.ns(t1), CPUNS: int64(cpu), ProcessCPUNS: int64(proc)}
	if d := t1.Sub(t0); d > 0 {
		r.Rate = float64(n) / d.Seconds()
	}
	return r, err
}

// dropAllFilter is a classic BPF program that accepts nothing: a UDP
// socket with it attached holds its port but never queues a datagram.
func dropAllFilter() []bpf.RawInstruction {
	prog, err := bpf.Assemble([]bpf.Instruction{bpf.RetConstant{Val: 0}})
	if err != nil {
		panic(err)
	}
	return prog
}

// attachFilter attaches a classic BPF program to a socket.
func attachFilter(fd int, prog []bpf.RawInstruction) error {
	filter := make([]unix.SockFilter, len(prog))
	for i, ins := range prog {
		filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	return os.NewSyscallError("setsockopt SO_ATTACH_FILTER",
		unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog))
}

// reservePort binds a dual-stack UDP socket to port that never queues a
// datagram, so that the kernel delivers to it (no ICMP port unreachable)
// at the cost of one filter run, as udpstream's own reservation does.
func reservePort(port int) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var ferr error
		if err := c.Control(func(fd uintptr) { ferr = attachFilter(int(fd), dropAllFilter()) }); err != nil {
			return err
		}
		return ferr
	}}
	return lc.ListenPacket(context.Background(), "udp", ":"+strconv.Itoa(port))
}

// floodMain is the flood role: a UDP sender blasting 64-byte datagrams at
// another port (held by a socket that never queues them) and a TCP stream
// to a third port on loopback, until its standard input closes or
// -max-time passes. It prints {"ready":true} once both are running.
func floodMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("flood", flag.ContinueOnError)
	fs.SetOutput(stderr)
	family := fs.Int("family", 4, "IP version of the flood, 4 or 6")
	udpPort := fs.Int("udp-port", 0, "UDP port to blast")
	tcpPort := fs.Int("tcp-port", 0, "TCP port to stream to")
	maxTime := fs.Duration("max-time", time.Minute, "stop after this long whatever happens")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if err := runFlood(*family, *udpPort, *tcpPort, *maxTime, stdout); err != nil {
		fmt.Fprintf(stderr, "bench flood: %v\n", err)
		return 1
	}
	return 0
}

func runFlood(family, udpPort, tcpPort int, maxTime time.Duration, stdout io.Writer) error {
	deadline := time.Now().Add(maxTime)
	var stop atomic.Bool

	sink, err := reservePort(udpPort)
	if err != nil {
		return fmt.Errorf("holding the flood's UDP port: %w", err)
	}
	defer sink.Close()
	b, err := newBlaster(family, netip.AddrPortFrom(loopback(family), uint16(udpPort)), 64)
	if err != nil {
		return err
	}
	defer b.close()

	tcpAddr := netip.AddrPortFrom(loopback(family), uint16(tcpPort)).String()
	ln, err := net.Listen("tcp", tcpAddr)
	if err != nil {
		return err
	}
	defer ln.Close()
	client, err := net.Dial("tcp", tcpAddr)
	if err != nil {
		return err
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		return err
	}
	defer server.Close()
	for _, c := range []net.Conn{client, server} {
		_ = c.SetDeadline(deadline)
	}

	// Every loop is bounded in count as well as by the deadline.
	const maxOps = 1 << 24
	var wg sync.WaitGroup
	// stream moves 64 KiB at a time through op until told to stop.
	stream := func(op func([]byte) (int, error)) func() {
		return func() {
			buf := make([]byte, 64<<10)
			for range maxOps {
				if stop.Load() {
					return
				}
				if _, err := op(buf); err != nil {
					return
				}
			}
		}
	}
	wg.Go(stream(server.Read))  // the TCP reader
	wg.Go(stream(client.Write)) // the TCP writer
	// The UDP blaster, bounded by count and time.
	wg.Go(func() {
		_, _ = b.send(maxOps*sendBatch, deadline, &stop)
	})

	if err := json.NewEncoder(stdout).Encode(map[string]bool{"ready": true}); err != nil {
		return err
	}
	// Run until the orchestrator closes our standard input, or the
	// deadline.
	eof := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
		close(eof)
	}()
	select {
	case <-eof:
	case <-time.After(time.Until(deadline)):
	}
	stop.Store(true)
	past := time.Unix(1, 0)
	_ = client.SetDeadline(past)
	_ = server.SetDeadline(past)
	wg.Wait()
	return nil
}
