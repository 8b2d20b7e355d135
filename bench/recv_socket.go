//go:build linux

package main

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/udpstream/udpstream"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// pastDeadline interrupts a read blocked in the runtime poller.
var pastDeadline = time.Unix(1, 0)

// endOfLoop reports whether err ends a receive loop as asked (a deadline
// set by interrupt) rather than by failure.
func endOfLoop(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// openUDPConn is the baseline: one dual-stack socket on [::]:port read with
// ReadMsgUDPAddrPort into one reused buffer. It sees the source but no
// header: neither the destination nor the TTL.
func openUDPConn(c recvConfig, m *meter) (*session, error) {
	pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(c.port))
	if err != nil {
		return nil, err
	}
	conn := pc.(*net.UDPConn)
	l := m.newLane()
	loop := func() {
		buf := make([]byte, 64<<10)
		for {
			n, _, _, src, err := conn.ReadMsgUDPAddrPort(buf, nil)
			if err != nil {
				if !endOfLoop(err) {
					l.fail(err)
				}
				return
			}
			if l.take(src, netip.Addr{}, 0, touch(buf[:n])) {
				return
			}
		}
	}
	return &session{
		loops:     []func(){loop},
		interrupt: func() { _ = conn.SetReadDeadline(pastDeadline) },
		close:     func() { conn.Close() },
	}, nil
}

// batchSize is how many datagrams one recvmmsg call may return.
const batchSize = 64

// openXNetBatch receives with golang.org/x/net: an ipv4.PacketConn on
// 0.0.0.0:port and an ipv6.PacketConn on [::]:port (IPv6 only), each asking
// for the TTL or hop limit, the destination and the interface in control
// messages, read in batches with ReadBatch (recvmmsg).
func openXNetBatch(c recvConfig, m *meter) (*session, error) {
	p := strconv.Itoa(c.port)
	c4, err := net.ListenPacket("udp4", "0.0.0.0:"+p)
	if err != nil {
		return nil, err
	}
	c6, err := net.ListenPacket("udp6", "[::]:"+p)
	if err != nil {
		c4.Close()
		return nil, err
	}
	s := &session{
		interrupt: func() {
			_ = c4.SetReadDeadline(pastDeadline)
			_ = c6.SetReadDeadline(pastDeadline)
		},
		close: func() {
			c4.Close()
			c6.Close()
		},
	}
	const flags4 = ipv4.FlagTTL | ipv4.FlagDst | ipv4.FlagInterface
	const flags6 = ipv6.FlagHopLimit | ipv6.FlagDst | ipv6.FlagInterface
	p4, p6 := ipv4.NewPacketConn(c4), ipv6.NewPacketConn(c6)
	if err := p4.SetControlMessage(flags4, true); err != nil {
		s.close()
		return nil, err
	}
	if err := p6.SetControlMessage(flags6, true); err != nil {
		s.close()
		return nil, err
	}

	var cm4 ipv4.ControlMessage
	loop4 := batchLoop(m.newLane(), ipv4.NewControlMessage(flags4), p4.ReadBatch, func(oob []byte) (net.IP, int, error) {
		err := cm4.Parse(oob)
		return cm4.Dst, cm4.TTL, err
	})
	var cm6 ipv6.ControlMessage
	loop6 := batchLoop(m.newLane(), ipv6.NewControlMessage(flags6), p6.ReadBatch, func(oob []byte) (net.IP, int, error) {
		err := cm6.Parse(oob)
		return cm6.Dst, cm6.HopLimit, err
	})
	s.loops = []func(){loop4, loop6}
	return s, nil
}

// batchLoop returns the receive loop of one x/net PacketConn: read a
// batch, and take each datagram whose source and control message (parse
// returns its destination and TTL or hop limit) can be read.
func batchLoop(l *lane, oob []byte, read func([]ipv4.Message, int) (int, error), parse func(oob []byte) (dst net.IP, ttl int, err error)) func() {
	return func() {
		ms := newBatch(oob)
		for {
			n, err := read(ms, 0)
			if err != nil {
				if !endOfLoop(err) {
					l.fail(err)
				}
				return
			}
			for i := range ms[:n] {
				msg := &ms[i]
				ua, ok := msg.Addr.(*net.UDPAddr)
				if !ok {
					l.other++
					continue
				}
				dst, ttl, err := parse(msg.OOB[:msg.NN])
				if err != nil {
					l.other++
					continue
				}
				d, _ := netip.AddrFromSlice(dst)
				if l.take(ua.AddrPort(), d, uint8(ttl), touch(msg.Buffers[0][:msg.N])) {
					return
				}
			}
		}
	}
}

// batchBuffer is the payload buffer of each message of a batch: larger
// than any datagram the bench sends, and not a power of two that would
// put every buffer in the same cache sets.
const batchBuffer = 2048 + 64

// newBatch returns batchSize messages, each with its own payload buffer
// and a control-message buffer the size of oob.
func newBatch(oob []byte) []ipv4.Message {
	ms := make([]ipv4.Message, batchSize)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, batchBuffer)}
		ms[i].OOB = make([]byte, len(oob))
	}
	return ms
}

// chanBuffer is the payload buffer of each datagram net.UDPConn+chan hands
// over: larger than any datagram the bench sends.
const chanBuffer = 2048

// udpItem is a datagram net.UDPConn+chan hands over: its source and its
// bytes, in one of the reader's buffers.
type udpItem struct {
	src netip.AddrPort
	b   []byte
}

// udpConnChan reads a net.UDPConn on one goroutine and hands each
// datagram over a channel of udpstream's default capacity. Its buffers
// take turns: with capacity c, the reader fills one while c wait in the
// channel and the consumer holds one, so c+2 of them are never
// overwritten before the consumer is done with them.
type udpConnChan struct {
	conn *net.UDPConn
	ch   chan udpItem
}

func listenUDPConnChan(port int) (*udpConnChan, error) {
	pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(port))
	if err != nil {
		return nil, err
	}
	return &udpConnChan{conn: pc.(*net.UDPConn), ch: make(chan udpItem, udpstream.DefaultChannelCapacity)}, nil
}

// read is the reading goroutine: it returns, closing the channel, on the
// first error, which fail gets unless it is the deadline of an interrupt.
func (u *udpConnChan) read(fail func(error)) {
	defer close(u.ch)
	slab := make([]byte, (cap(u.ch)+2)*chanBuffer)
	for i := 0; ; i = (i + 1) % (cap(u.ch) + 2) {
		buf := slab[i*chanBuffer : (i+1)*chanBuffer]
		n, _, _, src, err := u.conn.ReadMsgUDPAddrPort(buf, nil)
		if err != nil {
			if !endOfLoop(err) {
				fail(err)
			}
			return
		}
		u.ch <- udpItem{src: src, b: buf[:n]}
	}
}

// openUDPConnChan is net.UDPConn+chan: the baseline's socket read on one
// goroutine, each datagram handed over a channel to a consumer goroutine,
// the shape of any channel API over a plain socket.
func openUDPConnChan(c recvConfig, m *meter) (*session, error) {
	u, err := listenUDPConnChan(c.port)
	if err != nil {
		return nil, err
	}
	l := m.newLane()
	consume := func() {
		for it := range u.ch {
			if l.take(it.src, netip.Addr{}, 0, touch(it.b)) {
				for range u.ch { // leave no send blocked
				}
				return
			}
		}
	}
	return &session{
		loops:     []func(){func() { u.read(l.fail) }, consume},
		interrupt: func() { _ = u.conn.SetReadDeadline(pastDeadline) },
		close:     func() { u.conn.Close() },
	}, nil
}
