package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
	"time"
)

// capture is a pcapng file as a test reads it back.
type capture struct {
	userApp string
	ifaces  []captureIface
	packets []capturePacket
}

type captureIface struct {
	linkType uint16
	snapLen  uint32
	name     string
	tsresol  int // -1 when absent
}

type capturePacket struct {
	iface    int
	time     time.Time
	data     []byte
	original int
}

// readCapture is a minimal pcapng reader, written from the format's
// description apart from the writer: one little-endian section, the block
// types the writer uses, every length checked.
func readCapture(b []byte) (*capture, error) {
	le := binary.LittleEndian
	c := &capture{}
	first := true
	for len(b) > 0 {
		if len(b) < 12 {
			return nil, fmt.Errorf("%d bytes left, less than a block", len(b))
		}
		typ, n := le.Uint32(b), int(le.Uint32(b[4:]))
		if n < 12 || n%4 != 0 || n > len(b) {
			return nil, fmt.Errorf("block type %#x: bad total length %d (%d bytes left)", typ, n, len(b))
		}
		if tail := int(le.Uint32(b[n-4:])); tail != n {
			return nil, fmt.Errorf("block type %#x: total length %d at the start, %d at the end", typ, n, tail)
		}
		body := b[8 : n-4]
		b = b[n:]
		if first != (typ == 0x0a0d0d0a) {
			return nil, fmt.Errorf("block type %#x: a section header must come first, and once", typ)
		}
		first = false
		switch typ {
		case 0x0a0d0d0a:
			if len(body) < 16 || le.Uint32(body) != 0x1a2b3c4d || le.Uint16(body[4:]) != 1 || le.Uint16(body[6:]) != 0 {
				return nil, fmt.Errorf("section header %x: want little-endian, version 1.0", body)
			}
			opts, err := readOptions(body[16:])
			if err != nil {
				return nil, err
			}
			c.userApp = string(opts[4])
		case 1:
			if len(body) < 8 {
				return nil, fmt.Errorf("interface description of %d bytes", len(body))
			}
			opts, err := readOptions(body[8:])
			if err != nil {
				return nil, err
			}
			ifc := captureIface{linkType: le.Uint16(body), snapLen: le.Uint32(body[4:]), name: string(opts[2]), tsresol: -1}
			if v, ok := opts[9]; ok && len(v) == 1 {
				ifc.tsresol = int(v[0])
			}
			c.ifaces = append(c.ifaces, ifc)
		case 6:
			if len(body) < 20 {
				return nil, fmt.Errorf("enhanced packet of %d bytes", len(body))
			}
			id := int(le.Uint32(body))
			if id >= len(c.ifaces) {
				return nil, fmt.Errorf("packet on interface %d, of %d described", id, len(c.ifaces))
			}
			if c.ifaces[id].tsresol != 9 {
				return nil, fmt.Errorf("packet on interface %d, whose timestamps are not in ns", id)
			}
			ts := uint64(le.Uint32(body[4:]))<<32 | uint64(le.Uint32(body[8:]))
			caplen, orig := int(le.Uint32(body[12:])), int(le.Uint32(body[16:]))
			padded := (caplen + 3) &^ 3
			if 20+padded > len(body) {
				return nil, fmt.Errorf("packet of %d bytes in a block of %d", caplen, len(body))
			}
			if _, err := readOptions(body[20+padded:]); err != nil {
				return nil, err
			}
			c.packets = append(c.packets, capturePacket{
				iface: id, time: time.Unix(0, int64(ts)), data: bytes.Clone(body[20 : 20+caplen]), original: orig,
			})
		default:
			return nil, fmt.Errorf("unexpected block type %#x", typ)
		}
	}
	if first {
		return nil, fmt.Errorf("empty file")
	}
	return c, nil
}

// readOptions reads a block's options up to opt_endofopt, which must be
// the last.
func readOptions(b []byte) (map[uint16][]byte, error) {
	le := binary.LittleEndian
	opts := map[uint16][]byte{}
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, fmt.Errorf("option of %d bytes", len(b))
		}
		code, n := le.Uint16(b), int(le.Uint16(b[2:]))
		if code == 0 {
			if n != 0 || len(b) != 4 {
				return nil, fmt.Errorf("opt_endofopt of length %d with %d bytes after it", n, len(b)-4)
			}
			return opts, nil
		}
		padded := (n + 3) &^ 3
		if 4+padded > len(b) {
			return nil, fmt.Errorf("option %d of %d bytes, %d left", code, n, len(b)-4)
		}
		opts[code] = b[4 : 4+n]
		b = b[4+padded:]
	}
	if len(opts) > 0 {
		return nil, fmt.Errorf("options without opt_endofopt")
	}
	return opts, nil
}

// TestPcapng writes a capture of datagrams on two interfaces, of every
// length modulo 4, and reads it back.
func TestPcapng(t *testing.T) {
	c := newPcapngWriter()
	file := bytes.Clone(c.header())
	t0 := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	type sent struct {
		ifindex int
		name    string
		data    []byte
	}
	var all []sent
	for i := range 9 {
		s := sent{ifindex: 1, name: "lo", data: bytes.Repeat([]byte{byte(i)}, 28+i)}
		if i%3 == 2 {
			s.ifindex, s.name = 7, "" // a name that could not be resolved
		}
		all = append(all, s)
		file = append(file, c.packet(s.ifindex, s.name, t0.Add(time.Duration(i)*time.Nanosecond), s.data)...)
	}
	got, err := readCapture(file)
	if err != nil {
		t.Fatal(err)
	}
	if got.userApp != "udpstream" {
		t.Errorf("shb_userappl %q", got.userApp)
	}
	want := []captureIface{{101, 0, "lo", 9}, {101, 0, "if7", 9}}
	if fmt.Sprint(got.ifaces) != fmt.Sprint(want) {
		t.Errorf("interfaces %+v, want %+v", got.ifaces, want)
	}
	if len(got.packets) != len(all) {
		t.Fatalf("%d packets, want %d", len(got.packets), len(all))
	}
	for i, p := range got.packets {
		wantIface := 0
		if all[i].ifindex == 7 {
			wantIface = 1
		}
		if p.iface != wantIface || !p.time.Equal(t0.Add(time.Duration(i))) || !bytes.Equal(p.data, all[i].data) || p.original != len(all[i].data) {
			t.Errorf("packet %d: %+v, want %+v at %v", i, p, all[i], t0.Add(time.Duration(i)))
		}
	}
}
