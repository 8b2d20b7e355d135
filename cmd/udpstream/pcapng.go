package main

import (
	"encoding/binary"
	"strconv"
	"time"
)

// A pcapng capture (draft-ietf-opsawg-pcapng), as Wireshark, tshark and
// tcpdump read it: a Section Header Block, then an Interface Description
// Block for each interface the moment its first datagram is written, then
// an Enhanced Packet Block per datagram. The link type is LINKTYPE_RAW:
// every block's data is a bare IP packet, IPv4 or IPv6 told apart by its
// version nibble, so that one interface needs one description whatever
// the families on it (LINKTYPE_IPV4 and LINKTYPE_IPV6 would need two).
//
// The writer only lays blocks out; what it is given to write (each
// datagram whole, reassembled, or with -w-fragments each fragment as it
// came) and when it is flushed is the caller's.

// pcapng block types and options.
const (
	pcapngSHB = 0x0a0d0d0a
	pcapngIDB = 0x00000001
	pcapngEPB = 0x00000006

	pcapngByteOrder = 0x1a2b3c4d

	optEndOfOpt   = 0
	optSHBUserApp = 4
	optIfName     = 2
	optIfTSResol  = 9

	linktypeRaw = 101 // LINKTYPE_RAW: the packet starts with its IP header
)

// pcapngWriter lays out the blocks of one capture section.
type pcapngWriter struct {
	ifaces map[int]uint32 // interface index -> Interface ID in the section
	buf    []byte
}

func newPcapngWriter() *pcapngWriter {
	return &pcapngWriter{ifaces: make(map[int]uint32)}
}

// le is the byte order of the blocks written; the byte-order magic of the
// section header tells readers which it is.
var le = binary.LittleEndian

// header returns the Section Header Block that starts the capture.
func (c *pcapngWriter) header() []byte {
	b := c.begin(pcapngSHB)
	b = le.AppendUint32(b, pcapngByteOrder)
	b = le.AppendUint16(b, 1) // version 1.0
	b = le.AppendUint16(b, 0)
	b = le.AppendUint64(b, ^uint64(0)) // section length not given
	b = appendOption(b, optSHBUserApp, []byte("udpstream"))
	b = appendOption(b, optEndOfOpt, nil)
	c.buf = end(b)
	return c.buf
}

// packet returns the blocks that record one datagram: an Interface
// Description Block first if its interface has none yet, then the
// Enhanced Packet Block. ifname is the interface's name, "" if unknown;
// at is the kernel's receive time; ip is the packet from its IP header on.
// The bytes are valid until the next call.
func (c *pcapngWriter) packet(ifindex int, ifname string, at time.Time, ip []byte) []byte {
	b := c.buf[:0]
	id, ok := c.ifaces[ifindex]
	if !ok {
		id = uint32(len(c.ifaces))
		c.ifaces[ifindex] = id
		b = c.appendInterface(b, ifindex, ifname)
	}
	start := len(b)
	b = le.AppendUint32(b, pcapngEPB)
	b = le.AppendUint32(b, 0) // total length, set by endAt
	b = le.AppendUint32(b, id)
	ns := uint64(at.UnixNano()) // if_tsresol 9: nanoseconds since 1970
	b = le.AppendUint32(b, uint32(ns>>32))
	b = le.AppendUint32(b, uint32(ns))
	b = le.AppendUint32(b, uint32(len(ip))) // captured
	b = le.AppendUint32(b, uint32(len(ip))) // on the wire
	b = appendPadded(b, ip)
	c.buf = endAt(b, start)
	return c.buf
}

// appendInterface appends the Interface Description Block of an interface:
// raw IP, no snapshot limit, its name, nanosecond timestamps.
func (c *pcapngWriter) appendInterface(b []byte, ifindex int, ifname string) []byte {
	if ifname == "" {
		ifname = "if" + strconv.Itoa(ifindex)
	}
	start := len(b)
	b = le.AppendUint32(b, pcapngIDB)
	b = le.AppendUint32(b, 0)
	b = le.AppendUint16(b, linktypeRaw)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint32(b, 0) // snaplen 0: no limit
	b = appendOption(b, optIfName, []byte(ifname))
	b = appendOption(b, optIfTSResol, []byte{9}) // 10^-9 s
	b = appendOption(b, optEndOfOpt, nil)
	return endAt(b, start)
}

// begin starts a block of type typ in the writer's buffer.
func (c *pcapngWriter) begin(typ uint32) []byte {
	b := le.AppendUint32(c.buf[:0], typ)
	return le.AppendUint32(b, 0)
}

// end finishes the block that fills b.
func end(b []byte) []byte { return endAt(b, 0) }

// endAt finishes the block that starts at b[start]: its total length at
// both ends, so that readers can walk the file either way.
func endAt(b []byte, start int) []byte {
	n := uint32(len(b) - start + 4)
	le.PutUint32(b[start+4:], n)
	return le.AppendUint32(b, n)
}

// appendOption appends an option: code, length, value padded to 32 bits.
func appendOption(b []byte, code uint16, v []byte) []byte {
	b = le.AppendUint16(b, code)
	b = le.AppendUint16(b, uint16(len(v)))
	return appendPadded(b, v)
}

// appendPadded appends v and the zeros that pad it to 32 bits.
func appendPadded(b, v []byte) []byte {
	b = append(b, v...)
	return append(b, make([]byte, -len(v)&3)...)
}
