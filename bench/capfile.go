//go:build linux

package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// fileCount is what a capture's output file holds.
type fileCount struct {
	Kept      uint64 `json:"kept"`                // datagrams of the burst
	Other     uint64 `json:"other"`               // records that are not
	Malformed uint64 `json:"malformed,omitempty"` // JSON lines that do not decode
}

// countJSONLines counts the lines of the command's -json output that are
// delivered datagrams to port.
func countJSONLines(path string, port int) (fileCount, error) {
	var c fileCount
	f, err := os.Open(path)
	if err != nil {
		return c, err
	}
	defer f.Close()
	sc := bufio.NewScanner(bufio.NewReaderSize(f, 1<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var line struct {
			Dport *int   `json:"dport"`
			Error string `json:"error"`
		}
		switch {
		case json.Unmarshal(sc.Bytes(), &line) != nil:
			c.Malformed++
		case line.Error == "" && line.Dport != nil && *line.Dport == port:
			c.Kept++
		default:
			c.Other++
		}
	}
	return c, sc.Err()
}

// Link types a capture of the bench's traffic may have.
const (
	linkEthernet = 1
	linkRaw      = 101
	linkSLL      = 113
	linkIPv4     = 228
	linkIPv6     = 229
	linkSLL2     = 276
)

// ipPacket returns the IP packet in a captured frame of link type lt,
// nil if it holds none.
func ipPacket(lt uint32, frame []byte) []byte {
	switch lt {
	case linkRaw, linkIPv4, linkIPv6:
		return frame
	case linkEthernet:
		off := 12
		for len(frame) >= off+2 && binary.BigEndian.Uint16(frame[off:]) == 0x8100 {
			off += 4 // an 802.1Q tag
		}
		if len(frame) < off+2 {
			return nil
		}
		switch binary.BigEndian.Uint16(frame[off:]) {
		case 0x0800, 0x86dd:
			return frame[off+2:]
		}
	case linkSLL:
		if len(frame) >= 16 {
			return frame[16:]
		}
	case linkSLL2:
		if len(frame) >= 20 {
			return frame[20:]
		}
	}
	return nil
}

// errTruncated says a capture file ends inside a record.
var errTruncated = errors.New("the file ends inside a record")

// countCaptureFile counts the UDP datagrams to port in a pcap or pcapng
// file, whichever it is.
func countCaptureFile(path string, port int) (fileCount, error) {
	f, err := os.Open(path)
	if err != nil {
		return fileCount{}, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	magic, err := r.Peek(4)
	if err != nil {
		return fileCount{}, fmt.Errorf("%s: no capture header: %w", path, err)
	}
	var c fileCount
	each := func(lt uint32, frame []byte) {
		if _, _, _, _, ok := parseUDP(ipPacket(lt, frame), uint16(port)); ok {
			c.Kept++
		} else {
			c.Other++
		}
	}
	switch binary.LittleEndian.Uint32(magic) {
	case pcapngSectionHeader:
		err = readPcapng(r, each)
	case 0xa1b2c3d4, 0xd4c3b2a1, 0xa1b23c4d, 0x4d3cb2a1:
		err = readPcap(r, each)
	default:
		err = fmt.Errorf("neither pcap nor pcapng (starts % x)", magic)
	}
	if err != nil {
		err = fmt.Errorf("%s: %w", path, err)
	}
	return c, err
}

// readPcap calls each for every record of a classic pcap file, in either
// byte order, with microsecond or nanosecond times.
func readPcap(r io.Reader, each func(linkType uint32, frame []byte)) error {
	var hdr [24]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return fmt.Errorf("pcap header: %w", err)
	}
	var bo binary.ByteOrder = binary.LittleEndian
	if m := binary.BigEndian.Uint32(hdr[:]); m == 0xa1b2c3d4 || m == 0xa1b23c4d {
		bo = binary.BigEndian
	}
	// The top bits of the link type field carry FCS information.
	lt := bo.Uint32(hdr[20:]) & 0x0fffffff
	var rec [16]byte
	var frame []byte
	for {
		if _, err := io.ReadFull(r, rec[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return errTruncated
		}
		n := bo.Uint32(rec[8:]) // captured length
		if n > 1<<20 {
			return fmt.Errorf("a record of %d bytes", n)
		}
		frame = grow(frame, int(n))
		if _, err := io.ReadFull(r, frame); err != nil {
			return errTruncated
		}
		each(lt, frame)
	}
}

// pcapng block types the counter reads; it skips the others.
const (
	pcapngSectionHeader   = 0x0a0d0d0a
	pcapngInterface       = 0x00000001
	pcapngObsoletePacket  = 0x00000002
	pcapngSimplePacket    = 0x00000003
	pcapngEnhancedPacket  = 0x00000006
	pcapngByteOrderMagic  = 0x1a2b3c4d
	pcapngMaxBlock        = 1 << 24
	pcapngBlockFraming    = 12 // type, length, and the length again at the end
	pcapngSimplePacketHdr = 4
)

// readPcapng calls each for every packet of a pcapng file: enhanced,
// simple and obsolete packet blocks, of every section and interface.
func readPcapng(r io.Reader, each func(linkType uint32, frame []byte)) error {
	var bo binary.ByteOrder = binary.LittleEndian
	type iface struct{ linkType, snapLen uint32 }
	var ifaces []iface
	var head [8]byte
	var body []byte
	for {
		if _, err := io.ReadFull(r, head[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return errTruncated
		}
		typ := binary.LittleEndian.Uint32(head[:])
		if typ == pcapngSectionHeader {
			// Each section declares its byte order: read the magic that
			// follows the length, then the length in that order.
			var m [4]byte
			if _, err := io.ReadFull(r, m[:]); err != nil {
				return errTruncated
			}
			switch {
			case binary.LittleEndian.Uint32(m[:]) == pcapngByteOrderMagic:
				bo = binary.LittleEndian
			case binary.BigEndian.Uint32(m[:]) == pcapngByteOrderMagic:
				bo = binary.BigEndian
			default:
				return fmt.Errorf("a section header without the byte-order magic")
			}
			ifaces = ifaces[:0]
			n := bo.Uint32(head[4:])
			if n < pcapngBlockFraming+4 || n%4 != 0 || n > pcapngMaxBlock {
				return fmt.Errorf("a section header of %d bytes", n)
			}
			if _, err := io.CopyN(io.Discard, r, int64(n)-pcapngBlockFraming); err != nil {
				return errTruncated
			}
			continue
		}
		typ = bo.Uint32(head[:])
		n := bo.Uint32(head[4:])
		if n < pcapngBlockFraming || n%4 != 0 || n > pcapngMaxBlock {
			return fmt.Errorf("a block of type %#x and %d bytes", typ, n)
		}
		body = grow(body, int(n)-8) // with the trailing length
		if _, err := io.ReadFull(r, body); err != nil {
			return errTruncated
		}
		body := body[:len(body)-4]
		packet := func(id uint32, capLen uint32, data []byte) error {
			if int(id) >= len(ifaces) {
				return fmt.Errorf("a packet on interface %d of %d described", id, len(ifaces))
			}
			if int(capLen) > len(data) {
				return fmt.Errorf("a packet of %d bytes in a block of %d", capLen, len(data))
			}
			each(ifaces[id].linkType, data[:capLen])
			return nil
		}
		var err error
		switch typ {
		case pcapngInterface:
			if len(body) < 8 {
				return fmt.Errorf("an interface description of %d bytes", n)
			}
			ifaces = append(ifaces, iface{linkType: uint32(bo.Uint16(body)), snapLen: bo.Uint32(body[4:])})
		case pcapngEnhancedPacket:
			if len(body) < 20 {
				return fmt.Errorf("an enhanced packet block of %d bytes", n)
			}
			err = packet(bo.Uint32(body), bo.Uint32(body[12:]), body[20:])
		case pcapngObsoletePacket:
			if len(body) < 20 {
				return fmt.Errorf("a packet block of %d bytes", n)
			}
			err = packet(uint32(bo.Uint16(body)), bo.Uint32(body[12:]), body[20:])
		case pcapngSimplePacket:
			if len(body) < pcapngSimplePacketHdr || len(ifaces) == 0 {
				return fmt.Errorf("a simple packet block of %d bytes, or before any interface", n)
			}
			// Its captured length is the original, cut to the snap length.
			capLen := bo.Uint32(body)
			if s := ifaces[0].snapLen; s != 0 && capLen > s {
				capLen = s
			}
			err = packet(0, capLen, body[pcapngSimplePacketHdr:])
		}
		if err != nil {
			return err
		}
	}
}

// grow returns b resized to n bytes, reallocated only when it must be.
func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}
