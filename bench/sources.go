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
	"unsafe"

	"golang.org/x/sys/unix"
)

// manySources sends the traffic of the many-sources runs: UDP datagrams
// from a rotating set of source addresses, a share of them fragmented in
// two, built whole by the bench and sent on a raw socket (IPPROTO_RAW,
// which implies IP_HDRINCL and IPV6_HDRINCL), sendmmsg(2) 64 messages a
// call. Over loopback the kernel delivers them as any datagram from those
// sources: 127.0.0.0/8 is all this host's, and loopback takes any IPv6
// source but ::1's impostors, here fd00:b::/64. A run with one source
// goes the same way, so that runs differ in their sources alone.
//
// Raw-socket datagrams carry a checksum the kernel has not vouched for,
// so every receiver verifies it (or, as the floors, does not look): their
// figures are not those of the ordinary runs.
type manySources struct {
	fd       int
	family   int
	sources  int
	fragPct  int
	dst      netip.AddrPort
	to       []byte // a raw sockaddr_in or sockaddr_in6
	payload  []byte
	split    int    // bytes of the UDP datagram in a first fragment: a multiple of 8
	partial  uint32 // the checksum's sum over all but the source address
	msgs     []unix.Mmsghdr
	iovs     [][2]unix.Iovec
	hdrs     [][]byte // each message's own headers
	next     int      // the next datagram's index
	fragDone int      // datagrams fragmented so far
}

// Header lengths of what manySources builds.
const (
	ipv4Len     = 20
	ipv6Len     = 40
	fragHdrLen  = 8
	udpLen      = 8
	maxHdrBytes = ipv6Len + fragHdrLen + udpLen
)

// manySourceAddr returns the i-th source address of a family.
func manySourceAddr(family, i int) netip.Addr {
	if family == 6 {
		a := [16]byte{0xfd, 0x00, 0, 0x0b}
		binary.BigEndian.PutUint64(a[8:], uint64(i)+1)
		return netip.AddrFrom16(a)
	}
	// 127.1.0.1 on, clear of 127.0.0.1, the ordinary runs' source.
	v := uint32(127<<24|1<<16) + uint32(i) + 1
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], v)
	return netip.AddrFrom4(a)
}

// newManySources opens the raw socket of dst's family and prepares the
// datagrams.
func newManySources(dst netip.AddrPort, size, sources, fragPct int) (_ *manySources, err error) {
	s, err := newManyMessages(dst, size, sources, fragPct)
	if err != nil {
		return nil, err
	}
	domain := unix.AF_INET
	if s.family == 6 {
		domain = unix.AF_INET6
	}
	fd, err := sendSocket(domain, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return nil, err
	}
	// A raw socket's send buffer fills at the rate of a loopback; a larger
	// one blocks less often.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20)
	s.fd = fd
	return s, nil
}

// newManyMessages prepares the messages of manySources, without a socket.
func newManyMessages(dst netip.AddrPort, size, sources, fragPct int) (*manySources, error) {
	family := 4
	if dst.Addr().Is6() {
		family = 6
	}
	if sources < 1 || fragPct < 0 || fragPct > 100 {
		return nil, fmt.Errorf("%d sources, %d %% fragmented: want at least one source and a percentage", sources, fragPct)
	}
	s := &manySources{fd: -1, family: family, sources: sources, fragPct: fragPct, dst: dst, payload: make([]byte, size)}
	for i := range s.payload {
		s.payload[i] = payloadByte
	}
	if family == 6 {
		// The port of a raw IPv6 socket's address is its protocol or 0.
		sa := unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: dst.Addr().As16()}
		s.to = append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet6)...)
	} else {
		sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: dst.Addr().As4()}
		s.to = append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet4)...)
	}
	s.split = max(8, (udpLen+size)/2&^7)
	if s.split >= udpLen+size {
		return nil, fmt.Errorf("a %d-byte payload is too small to fragment", size)
	}
	// The UDP checksum's sum (RFC 768, RFC 8200 8.1) over the pseudo
	// header's destination, protocol and length, the UDP header with a
	// zero checksum, and the payload; each datagram adds its source.
	udpTotal := udpLen + size
	var sum uint32
	sum = addWords(sum, dst.Addr().AsSlice())
	sum += 17 + uint32(udpTotal)
	var udp [udpLen]byte
	binary.BigEndian.PutUint16(udp[0:], 40000+uint16(family)) // a fixed source port
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(udpTotal))
	sum = addWords(sum, udp[:])
	sum = addWords(sum, s.payload)
	s.partial = sum

	s.msgs = make([]unix.Mmsghdr, sendBatch)
	s.iovs = make([][2]unix.Iovec, sendBatch)
	s.hdrs = make([][]byte, sendBatch)
	for i := range s.msgs {
		s.hdrs[i] = make([]byte, maxHdrBytes)
		h := &s.msgs[i].Hdr
		h.Name = &s.to[0]
		h.Namelen = uint32(len(s.to))
		h.Iov = &s.iovs[i][0]
		h.SetIovlen(2)
	}
	return s, nil
}

// addWords adds b to a ones'-complement sum as big-endian 16-bit words; b
// has an even length, or its last byte is padded with zero.
func addWords(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

// fold ends a ones'-complement sum: the complement of its 16-bit fold,
// 0xffff for 0, as UDP sends it.
func fold(sum uint32) uint16 {
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	if c == 0 {
		c = 0xffff
	}
	return c
}

func (s *manySources) close() { unix.Close(s.fd) }

// fill writes message i: the IP header from src (with a fragment header
// for IPv6 fragments), for the part of datagram id that starts at byte off
// of the UDP datagram and holds n bytes of it, the UDP header when off is
// 0, and the payload bytes behind.
func (s *manySources) fill(i int, src netip.Addr, id uint32, off, n int, more bool) {
	h := s.hdrs[i][:0]
	udpTotal := udpLen + len(s.payload)
	frag := off > 0 || more
	if s.family == 4 {
		h = h[:ipv4Len]
		clear(h)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(ipv4Len+n)) // the kernel sets it too
		binary.BigEndian.PutUint16(h[4:], uint16(id))
		fo := uint16(off / 8)
		if more {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(h[6:], fo)
		h[8], h[9] = 64, 17
		a4 := src.As4()
		copy(h[12:], a4[:])
		a4 = s.dst.Addr().As4()
		copy(h[16:], a4[:])
	} else {
		hl := ipv6Len
		if frag {
			hl += fragHdrLen
		}
		h = h[:hl]
		clear(h)
		h[0] = 0x60
		binary.BigEndian.PutUint16(h[4:], uint16(hl-ipv6Len+n))
		h[6], h[7] = 17, 64
		a16 := src.As16()
		copy(h[8:], a16[:])
		a16 = s.dst.Addr().As16()
		copy(h[24:], a16[:])
		if frag {
			h[6] = 44
			f := h[ipv6Len:]
			f[0] = 17
			fo := uint16(off)
			if more {
				fo |= 1
			}
			binary.BigEndian.PutUint16(f[2:], fo)
			binary.BigEndian.PutUint32(f[4:], id)
		}
	}
	payload := s.payload
	if off == 0 {
		// The UDP header, its checksum with this source.
		u := h[len(h) : len(h)+udpLen]
		binary.BigEndian.PutUint16(u[0:], 40000+uint16(s.family))
		binary.BigEndian.PutUint16(u[2:], s.dst.Port())
		binary.BigEndian.PutUint16(u[4:], uint16(udpTotal))
		binary.BigEndian.PutUint16(u[6:], fold(addWords(s.partial, src.AsSlice())))
		h = h[:len(h)+udpLen]
		payload = payload[:n-udpLen]
	} else {
		payload = payload[off-udpLen : off-udpLen+n]
	}
	s.iovs[i][0].Base = &h[0]
	s.iovs[i][0].SetLen(len(h))
	if len(payload) == 0 {
		s.iovs[i][1].Base = nil
	} else {
		s.iovs[i][1].Base = &payload[0]
	}
	s.iovs[i][1].SetLen(len(payload))
}

// fillBatch fills the messages of the datagrams from the sent-th on, up
// to count, their fragments side by side, and returns how many messages
// it filled and the datagram count once they are out. last[j] is the
// count once message j is out.
func (s *manySources) fillBatch(sent, count int, last *[sendBatch]int) (n, datagrams int) {
	udpTotal := udpLen + len(s.payload)
	datagrams = sent
	for datagrams < count && n < sendBatch {
		src := manySourceAddr(s.family, s.next%s.sources)
		id := uint32(s.next%0xffff) + 1 // never 0, which an IPv4 raw socket replaces
		// fragPct of every 100 datagrams, spread evenly.
		if (s.next+1)*s.fragPct/100 > s.fragDone {
			if n+2 > sendBatch {
				break // its fragments go together, in the next batch
			}
			s.fragDone++
			s.fill(n, src, id, 0, s.split, true)
			s.fill(n+1, src, id, s.split, udpTotal-s.split, false)
			last[n] = datagrams
			n += 2
		} else {
			s.fill(n, src, id, 0, udpTotal, false)
			n++
		}
		datagrams++
		s.next++
		last[n-1] = datagrams
	}
	return n, datagrams
}

// send sends count datagrams, or fewer if deadline passes or stop is set
// first, and returns how many were sent whole.
func (s *manySources) send(count int, deadline time.Time, stop *atomic.Bool) (int, error) {
	sent := 0
	var last [sendBatch]int
	for sent < count {
		if stop != nil && stop.Load() {
			break
		}
		if time.Now().After(deadline) {
			return sent, fmt.Errorf("sent %d of %d datagrams before the deadline", sent, count)
		}
		n, datagrams := s.fillBatch(sent, count, &last)
		for done := 0; done < n; {
			r, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&s.msgs[done])), uintptr(n-done), 0, 0, 0)
			if errno != 0 {
				if errors.Is(errno, unix.ENOBUFS) || errors.Is(errno, unix.EAGAIN) || errors.Is(errno, unix.EINTR) {
					if time.Now().After(deadline) {
						return sent, fmt.Errorf("sent %d of %d datagrams before the deadline", sent, count)
					}
					continue
				}
				return sent, os.NewSyscallError("sendmmsg", errno)
			}
			done += int(r)
			if done > 0 {
				sent = last[done-1]
			}
		}
		sent = datagrams
	}
	return sent, nil
}
